--- :checkhealth fimtune: the server command, the running server's engine and state, the way suggestions are shown.
local M = {}

local health = vim.health or require('health')
local start = health.start or health.report_start
local ok = health.ok or health.report_ok
local info = health.info or health.report_info
local warn = health.warn or health.report_warn
local error = health.error or health.report_error

function M.check()
  start('fimtune')
  local fimtune = require('fimtune')
  local cmd = fimtune.config.cmd
  local exe = vim.fn.exepath(cmd[1])
  if exe == '' then
    error(
      ('server command `%s` not found'):format(cmd[1]),
      { "install fimtune in a virtualenv and pass setup({ cmd = { '/path/to/.venv/bin/fimtune', 'serve' } })" }
    )
  else
    ok(('server command: %s %s'):format(exe, table.concat(cmd, ' ', 2)))
  end
  if fimtune.config.native ~= false and vim.lsp.inline_completion and vim.lsp.inline_completion.enable then
    ok("suggestions: Neovim's native vim.lsp.inline_completion")
  else
    local v = vim.version()
    ok(('suggestions: fimtune ghost text (Neovim %d.%d.%d)'):format(v.major, v.minor, v.patch))
  end

  local clients = fimtune.clients()
  if #clients == 0 then
    warn('no fimtune server is running', { 'open a file (setup() starts the server for file buffers)' })
    return
  end
  for _, client in ipairs(clients) do
    local bufnr = next(client.attached_buffers or {}) or 0
    local response = fimtune._call(client, 'request_sync', 'fimtune/status', {}, 3000, bufnr)
    local status = response and response.result or fimtune.status[client.id]
    if not status then
      error(('server %d did not answer fimtune/status: %s'):format(client.id, vim.inspect(response and response.err)))
    else
      local line = ('server %d: %s, engine %s, model %s%s'):format(
        client.id,
        status.state,
        status.engine or '?',
        status.model ~= '' and status.model or '-',
        (status.message or '') ~= '' and (': ' .. status.message) or ''
      )
      if status.state == 'ready' then
        ok(line)
      elseif status.state == 'loading' then
        info(line)
      else
        error(line, { 'check the engine settings; the server log is in :LspLog' })
      end
    end
  end
end

return M
