/** End-to-end: the real `fimtune serve` over stdio, driven by the protocol library VS Code's client is built on. */

import { type ChildProcess, spawn } from "node:child_process";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  CancellationTokenSource,
  createProtocolConnection,
  DidChangeConfigurationNotification,
  DidChangeTextDocumentNotification,
  DidOpenTextDocumentNotification,
  ExecuteCommandRequest,
  ExitNotification,
  InitializedNotification,
  InitializeRequest,
  type InitializeResult,
  InlineCompletionRequest,
  type InlineCompletionItem,
  type InlineCompletionList,
  LSPErrorCodes,
  type ProtocolConnection,
  ResponseError,
  ShutdownRequest,
  StreamMessageReader,
  StreamMessageWriter,
  TextDocumentSyncKind,
} from "vscode-languageserver-protocol/node";
import { changedSettings, type ServerStatus, serverCommand, serverSettings, statusView } from "../src/settings";

// The suggestion the `fixed` engine answers with; a statement that ends the function body, so no stop rule cuts it.
const SUGGESTION = "return a + b";
const PY_URI = "file:///tmp/fimtune-vscode-test/calc.py";
const PY_TEXT = "def add(a, b):\n    \n\n\nprint(add(1, 2))\n";

/** The settings a user would write in settings.json, read the way the extension reads them. */
function reader(settings: Record<string, unknown>) {
  return (key: string) => settings[key];
}

function items(result: InlineCompletionList | InlineCompletionItem[] | null): InlineCompletionItem[] {
  if (result === null) {
    return [];
  }
  return Array.isArray(result) ? result : result.items;
}

describe("settings mapping", () => {
  test("only user-set settings are sent, dotted keys nest", () => {
    const settings = serverSettings(
      reader({
        engine: "openai",
        endpoint: "http://127.0.0.1:8000",
        "context.maxChars": 2000,
        "telemetry.includeText": false,
        languages: { "*": true, markdown: false },
        "server.command": "/opt/fimtune/bin/fimtune",
      }),
    );
    assert.deepEqual(settings, {
      engine: "openai",
      endpoint: "http://127.0.0.1:8000",
      context: { maxChars: 2000 },
      telemetry: { includeText: false },
      languages: { "*": true, markdown: false },
    });
  });

  test("a removed setting goes back to its default on change (the server merges changes)", () => {
    const defaults: Record<string, unknown> = { run: "", "context.maxChars": 4000, engine: "local" };
    const previous = { run: "/runs/a", context: { maxChars: 2000 }, engine: "fixed" };
    assert.deepEqual(changedSettings(reader({ engine: "fixed" }), reader(defaults), previous), {
      run: "",
      context: { maxChars: 4000 },
      engine: "fixed",
    });
    assert.deepEqual(changedSettings(reader({}), reader(defaults), {}), {});
  });

  test("server command defaults to `fimtune serve` and rejects malformed args", () => {
    assert.deepEqual(serverCommand(reader({})), { command: "fimtune", args: ["serve"] });
    assert.deepEqual(serverCommand(reader({ "server.command": " /v/bin/fimtune ", "server.args": ["serve", "--engine", "fixed"] })), {
      command: "/v/bin/fimtune",
      args: ["serve", "--engine", "fixed"],
    });
    assert.deepEqual(serverCommand(reader({ "server.args": "serve --tcp" })).args, ["serve"]);
  });


  test("status bar: error wins, then loading, then the enabled setting", () => {
    const error = statusView({ state: "error", engine: "local", message: "no run folder /x" }, true);
    assert.equal(error.error, true);
    assert.match(error.tooltip, /no run folder \/x/);
    assert.match(statusView({ state: "loading", engine: "local" }, false).text, /loading/);
    assert.match(statusView({ state: "ready", engine: "fixed" }, false).text, /circle-slash/);
    const ready = statusView({ state: "ready", engine: "openai", model: "team-adapter" }, true);
    assert.equal(ready.error, false);
    assert.match(ready.tooltip, /openai \/ team-adapter/);
  });
});

describe("fimtune serve over stdio", () => {
  let server: ChildProcess;
  let connection: ProtocolConnection;
  let stderr = "";
  const telemetry = join(mkdtempSync(join(tmpdir(), "fimtune-vscode-")), "telemetry.jsonl");
  const statuses: ServerStatus[] = [];
  const messages: string[] = [];

  async function inline(uri: string, line: number, character: number, token?: CancellationTokenSource) {
    return connection.sendRequest(
      InlineCompletionRequest.type,
      { textDocument: { uri }, position: { line, character }, context: { triggerKind: 2 } },
      token?.token,
    );
  }

  /** Sends new settings; with `reload`, waits until the server reports the rebuilt engine ready. */
  async function configure(settings: Record<string, unknown>, reload = false) {
    const seen = statuses.length;
    await connection.sendNotification(DidChangeConfigurationNotification.type, {
      settings: { fimtune: serverSettings(reader(settings)) },
    });
    if (reload) {
      await waitFor("the engine reloaded with new settings", () =>
        statuses.slice(seen).find((s) => s.state === "ready"),
      );
    }
  }

  async function waitFor<T>(what: string, probe: () => T | undefined, timeoutMs = 20000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = probe();
      if (value !== undefined) {
        return value;
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting for ${what}; server stderr:\n${stderr}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  before(async () => {
    const { command, args } = serverCommand(reader({ "server.command": process.env.FIMTUNE_COMMAND }));
    server = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"] });
    await new Promise<void>((resolve, reject) => {
      server.once("spawn", resolve);
      server.once("error", (error) =>
        reject(
          new Error(
            `could not start \`${command} ${args.join(" ")}\` (${error.message}): activate the virtualenv where ` +
              "fimtune is installed, or set FIMTUNE_COMMAND to its fimtune executable",
          ),
        ),
      );
    });
    server.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    connection = createProtocolConnection(
      new StreamMessageReader(server.stdout!),
      new StreamMessageWriter(server.stdin!),
    );
    connection.onNotification("fimtune/status", (status: ServerStatus) => {
      statuses.push(status);
    });
    connection.onNotification("window/showMessage", (params: { message: string }) => {
      messages.push(params.message);
    });
    connection.onNotification("window/logMessage", () => undefined);
    connection.listen();
  });

  after(async () => {
    connection?.dispose();
    if (server.exitCode === null) {
      server.kill();
    }
  });

  test("initialize advertises inline completion, incremental sync and the accepted command", async () => {
    const result: InitializeResult = await connection.sendRequest(InitializeRequest.type, {
      processId: process.pid,
      rootUri: null,
      workspaceFolders: null,
      capabilities: { textDocument: { inlineCompletion: { dynamicRegistration: false } } },
      initializationOptions: serverSettings(
        reader({
          engine: "fixed",
          fixed: { text: SUGGESTION },
          "context.enabled": false,
          debounceMs: 0,
          "telemetry.path": telemetry,
        }),
      ),
    });
    const caps = result.capabilities;
    assert.ok(caps.inlineCompletionProvider, "no inlineCompletionProvider");
    const sync = caps.textDocumentSync;
    assert.equal(typeof sync === "object" ? sync.change : sync, TextDocumentSyncKind.Incremental);
    assert.ok(caps.executeCommandProvider?.commands.includes("fimtune.accepted"));
    await connection.sendNotification(InitializedNotification.type, {});
  });

  test("status reaches ready for the fixed engine", async () => {
    const ready = await waitFor("a ready fimtune/status", () => statuses.find((s) => s.state === "ready"));
    assert.equal(ready.engine, "fixed");
    const asked = await connection.sendRequest<ServerStatus>("fimtune/status", {});
    assert.equal(asked.state, "ready");
    assert.equal(asked.engine, "fixed");
  });

  test("didOpen then inlineCompletion answers the suggestion at the cursor, and accepting it runs", async () => {
    await connection.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: PY_URI, languageId: "python", version: 1, text: PY_TEXT },
    });
    const [item, ...rest] = items(await inline(PY_URI, 1, 4));
    assert.equal(rest.length, 0);
    assert.equal(item.insertText, SUGGESTION);
    if (item.range !== undefined) {
      assert.deepEqual(item.range, { start: { line: 1, character: 4 }, end: { line: 1, character: 4 } });
    }
    assert.equal(item.command?.command, "fimtune.accepted");
    const id = (item.command?.arguments?.[0] as { id?: unknown } | undefined)?.id;
    assert.equal(typeof id, "string");
    await connection.sendRequest(ExecuteCommandRequest.type, {
      command: item.command!.command,
      arguments: item.command!.arguments,
    });
    // the server records the acceptance of that very suggestion (telemetry.path)
    const accepted = await waitFor("the accepted event in the telemetry file", () => {
      const lines = existsSync(telemetry) ? readFileSync(telemetry, "utf8").split("\n").filter((l) => l) : [];
      return lines.map((l) => JSON.parse(l)).find((e) => e.event === "accepted");
    });
    assert.equal(accepted.id, id);
  });

  test("an incremental edit is applied before the next request", async () => {
    await connection.sendNotification(DidChangeTextDocumentNotification.type, {
      textDocument: { uri: PY_URI, version: 2 },
      contentChanges: [{ range: { start: { line: 1, character: 4 }, end: { line: 1, character: 4 } }, text: "x = 1\n    " }],
    });
    const [item] = items(await inline(PY_URI, 2, 4));
    assert.equal(item.insertText, SUGGESTION);
  });

  test("per-language enable from didChangeConfiguration turns a language off", async () => {
    await configure({
      engine: "fixed",
      fixed: { text: SUGGESTION },
      debounceMs: 0,
      languages: { "*": true, plaintext: false },
    });
    const txtUri = "file:///tmp/fimtune-vscode-test/notes.txt";
    await connection.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: txtUri, languageId: "plaintext", version: 1, text: "some notes\n" },
    });
    assert.deepEqual(items(await inline(txtUri, 1, 0)), []);
    assert.equal(items(await inline(PY_URI, 2, 4))[0]?.insertText, SUGGESTION);
  });

  test("a cancelled request ends early, and the server still answers afterwards", async () => {
    const delayMs = 3000;
    await configure({ engine: "fixed", fixed: { text: SUGGESTION, delayMs }, debounceMs: 0, "telemetry.path": telemetry }, true);
    const source = new CancellationTokenSource();
    const started = Date.now();
    const pending = inline(PY_URI, 2, 4, source);
    setTimeout(() => source.cancel(), 100);
    let outcome: InlineCompletionItem[] | ResponseError<unknown>;
    try {
      outcome = items(await pending);
    } catch (error) {
      assert.ok(error instanceof ResponseError, `unexpected failure ${String(error)}`);
      outcome = error;
    }
    const elapsed = Date.now() - started;
    if (outcome instanceof ResponseError) {
      assert.equal(outcome.code, LSPErrorCodes.RequestCancelled, outcome.message);
    } else {
      assert.deepEqual(outcome, [], "a cancelled request must not return the suggestion");
    }
    assert.ok(elapsed < delayMs / 2, `cancellation took ${elapsed} ms (engine delay ${delayMs} ms)`);

    // the abandoned engine call must stop too: typing cancels often, and the next suggestion must not wait for it
    await configure({ engine: "fixed", fixed: { text: SUGGESTION, delayMs: 0 }, debounceMs: 0 }, true);
    const again = Date.now();
    const [item] = items(await inline(PY_URI, 2, 4));
    assert.equal(item?.insertText, SUGGESTION);
    const waited = Date.now() - again;
    assert.ok(waited < delayMs / 2, `the request after a cancellation waited ${waited} ms (engine delay ${delayMs} ms)`);
  });

  test("shutdown and exit end the process cleanly", async () => {
    await connection.sendRequest(ShutdownRequest.type);
    const exited = new Promise<number | null>((resolve) => server.once("exit", (code) => resolve(code)));
    await connection.sendNotification(ExitNotification.type);
    assert.equal(await exited, 0);
    assert.deepEqual(
      messages.filter((m) => /error|unknown|invalid/i.test(m)),
      [],
      "the server warned about a setting the extension sends",
    );
  });
});
