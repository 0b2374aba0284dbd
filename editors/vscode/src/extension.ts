/** The VS Code extension: starts `fimtune serve` over stdio, keeps its settings in sync, shows its status. */

import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  State,
  TransportKind,
} from "vscode-languageclient/node";
import {
  changedSettings,
  type ServerSettings,
  type ServerStatus,
  serverCommand,
  serverSettings,
  statusView,
} from "./settings";

const SECTION = "fimtune";

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let statusItem: vscode.StatusBarItem;
let lastStatus: ServerStatus = { state: "loading", message: "starting the server" };
let sentSettings: ServerSettings = {};

/** A user-set `fimtune.<key>` (workspace folder, workspace or user), undefined when only the default applies. */
function readUserSetting(key: string): unknown {
  const inspected = vscode.workspace.getConfiguration(SECTION).inspect(key);
  return inspected?.workspaceFolderValue ?? inspected?.workspaceValue ?? inspected?.globalValue;
}

function readDefault(key: string): unknown {
  return vscode.workspace.getConfiguration(SECTION).inspect(key)?.defaultValue;
}

function completionsEnabled(): boolean {
  return vscode.workspace.getConfiguration(SECTION).get<boolean>("enabled", true);
}

function showStatus(status: ServerStatus): void {
  lastStatus = status;
  const view = statusView(status, completionsEnabled());
  statusItem.text = view.text;
  statusItem.tooltip = view.tooltip;
  statusItem.backgroundColor = view.error ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  statusItem.show();
}

/** Copies a server stream (its log on stderr) line by line into the output channel. */
function forwardLines(input: NodeJS.ReadableStream, channel: vscode.LogOutputChannel): void {
  input.setEncoding("utf8");
  let pending = "";
  input.on("data", (chunk: string) => {
    const lines = (pending + chunk).split(/\r?\n/);
    pending = lines.pop() ?? "";
    lines.filter((line) => line !== "").forEach((line) => channel.appendLine(line));
  });
}

async function startClient(context: vscode.ExtensionContext): Promise<void> {
  const { command, args } = serverCommand(readUserSetting);
  const serverOptions: ServerOptions = { command, args, transport: TransportKind.stdio };
  const clientOptions: LanguageClientOptions = {
    // every document backed by a file; the server's `languages` setting decides per language
    documentSelector: [{ scheme: "file" }],
    initializationOptions: (sentSettings = serverSettings(readUserSetting)),
    outputChannel: output,
    stdioOptions: { stdout: forwardLines, stderr: forwardLines },
  };
  const next = new LanguageClient("fimtune", "fimtune", serverOptions, clientOptions);
  client = next;
  context.subscriptions.push(
    next.onNotification("fimtune/status", (status: ServerStatus) => showStatus(status)),
    next.onDidChangeState((event) => {
      if (event.newState === State.Stopped && client === next) {
        showStatus({ state: "error", message: "the server stopped; run `fimtune: Restart Server`" });
      }
    }),
  );
  showStatus({ state: "loading", message: `starting ${command} ${args.join(" ")}` });
  try {
    await next.start();
    showStatus(await next.sendRequest<ServerStatus>("fimtune/status", {}));
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    showStatus({ state: "error", message: reason });
    const choice = await vscode.window.showErrorMessage(
      `fimtune: could not start \`${command} ${args.join(" ")}\` (${reason}). Install fimtune in a Python ` +
        "environment and set `fimtune.server.command` to its `fimtune` executable.",
      "Open Settings",
      "Show Log",
    );
    if (choice === "Open Settings") {
      await vscode.commands.executeCommand("workbench.action.openSettings", "fimtune.server");
    } else if (choice === "Show Log") {
      output.show();
    }
  }
}

async function stopClient(): Promise<void> {
  const current = client;
  client = undefined;
  if (current !== undefined && current.state !== State.Stopped) {
    await current.stop();
  }
}

async function onConfigurationChanged(context: vscode.ExtensionContext, event: vscode.ConfigurationChangeEvent) {
  if (!event.affectsConfiguration(SECTION)) {
    return;
  }
  if (event.affectsConfiguration(`${SECTION}.server`)) {
    await stopClient();
    await startClient(context);
    return;
  }
  showStatus(lastStatus);
  if (client?.state === State.Running) {
    sentSettings = changedSettings(readUserSetting, readDefault, sentSettings);
    await client.sendNotification(DidChangeConfigurationNotification.type, { settings: { fimtune: sentSettings } });
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("fimtune", { log: true });
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.command = "fimtune.toggle";
  context.subscriptions.push(
    output,
    statusItem,
    vscode.commands.registerCommand("fimtune.restart", async () => {
      await stopClient();
      await startClient(context);
    }),
    vscode.commands.registerCommand("fimtune.toggle", async () => {
      // write where the value comes from, so a workspace setting does not hide the change
      const inspected = vscode.workspace.getConfiguration(SECTION).inspect<boolean>("enabled");
      const target =
        inspected?.workspaceFolderValue !== undefined
          ? vscode.ConfigurationTarget.WorkspaceFolder
          : inspected?.workspaceValue !== undefined
            ? vscode.ConfigurationTarget.Workspace
            : vscode.ConfigurationTarget.Global;
      await vscode.workspace.getConfiguration(SECTION).update("enabled", !completionsEnabled(), target);
    }),
    vscode.commands.registerCommand("fimtune.showLog", () => output.show()),
    vscode.workspace.onDidChangeConfiguration((event) => onConfigurationChanged(context, event)),
  );
  await startClient(context);
}

export async function deactivate(): Promise<void> {
  await stopClient();
}
