/** Maps VS Code's `fimtune.*` settings to the server's settings and command (no `vscode` import: node tests use it). */

/** Keys under `fimtune.` that the server reads, as dotted paths into its settings object (see `fimtune serve`). */
export const SERVER_KEYS = [
  "enabled",
  "engine",
  "endpoint",
  "model",
  "apiKey",
  "run",
  "baseModel",
  "template",
  "device",
  "maxTokens",
  "debounceMs",
  "timeoutMs",
  "context.enabled",
  "context.maxChars",
  "languages",
  "logLevel",
  "telemetry.path",
  "telemetry.includeText",
  "fixed",
] as const;

/** Reads one `fimtune.<key>` setting; returns undefined when the user did not set it. */
export type SettingReader = (key: string) => unknown;

export type ServerSettings = { [key: string]: unknown };

/**
 * The server's settings object (initializationOptions and `workspace/didChangeConfiguration`): only the settings the
 * user set, so the flags of `fimtune.server.args` (e.g. `--engine`) stay the defaults for the rest.
 */
export function serverSettings(read: SettingReader): ServerSettings {
  const out: ServerSettings = {};
  for (const key of SERVER_KEYS) {
    const value = read(key);
    if (value === undefined || value === null) {
      continue;
    }
    const parts = key.split(".");
    let node = out;
    for (const part of parts.slice(0, -1)) {
      const child = node[part];
      node = (typeof child === "object" && child !== null ? child : (node[part] = {})) as ServerSettings;
    }
    node[parts[parts.length - 1]] = value;
  }
  return out;
}

/**
 * Settings for `workspace/didChangeConfiguration`. The server merges them into what it has, so a setting the user
 * removed since `previous` (the settings sent last) is sent again with its default (`readDefault`).
 */
export function changedSettings(read: SettingReader, readDefault: SettingReader, previous: ServerSettings): ServerSettings {
  const sentBefore = (key: string) => {
    let node: unknown = previous;
    for (const part of key.split(".")) {
      node = typeof node === "object" && node !== null ? (node as ServerSettings)[part] : undefined;
    }
    return node !== undefined;
  };
  return serverSettings((key) => {
    const value = read(key);
    return value === undefined && sentBefore(key) ? readDefault(key) : value;
  });
}

export interface ServerCommand {
  command: string;
  args: string[];
}

/** How to start the server: `fimtune.server.command` and `fimtune.server.args`, defaulting to `fimtune serve`. */
export function serverCommand(read: SettingReader): ServerCommand {
  const command = read("server.command");
  const args = read("server.args");
  return {
    command: typeof command === "string" && command.trim() !== "" ? command.trim() : "fimtune",
    args: Array.isArray(args) && args.every((a) => typeof a === "string") ? (args as string[]) : ["serve"],
  };
}

/** What the status bar shows for a server status (`fimtune/status`) and the enabled setting. */
export interface StatusView {
  text: string;
  tooltip: string;
  error: boolean;
}

export interface ServerStatus {
  state: string;
  engine?: string;
  model?: string;
  message?: string;
}

export function statusView(status: ServerStatus, enabled: boolean): StatusView {
  const what = [status.engine, status.model].filter((s) => s).join(" / ");
  const detail = [what, status.message].filter((s) => s).join(": ");
  const suffix = "\nClick to toggle inline completions.";
  if (status.state === "error") {
    return { text: "$(error) fimtune", tooltip: `fimtune error: ${detail || "see the fimtune output"}${suffix}`, error: true };
  }
  if (status.state === "loading" || status.state === "starting") {
    return { text: "$(loading~spin) fimtune", tooltip: `fimtune loading ${detail}${suffix}`, error: false };
  }
  if (!enabled) {
    return { text: "$(circle-slash) fimtune", tooltip: `fimtune: completions off (${detail})${suffix}`, error: false };
  }
  return { text: "$(check) fimtune", tooltip: `fimtune ready: ${detail}${suffix}`, error: false };
}
