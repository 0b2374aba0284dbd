--- fimtune for Neovim: starts `fimtune serve` and shows its inline completions (native on 0.12+, ghost text before).
local M = {}

local uv = vim.uv or vim.loop
local api = vim.api

local NAME = 'fimtune'
local ns = api.nvim_create_namespace('fimtune.suggestion')

---@class fimtune.Options
local defaults = {
  -- how to start the server: a virtualenv's fimtune works without activating it ({'/path/.venv/bin/fimtune', 'serve'})
  cmd = { 'fimtune', 'serve' },
  -- server settings, as in `fimtune serve` (camelCase): engine, run, endpoint, model, maxTokens, languages, ...
  settings = {},
  -- nil: every buffer backed by a file; or a list of filetypes
  filetypes = nil,
  -- the folder the server runs for (one server per Neovim); nil: the current directory at setup()
  root_dir = nil,
  -- insert-mode key that accepts the suggestion, or a normal key press without one; false: no mapping
  accept_key = '<Tab>',
  -- ghost text (Neovim before 0.12): ask this long after the last keystroke; false: only on request()
  debounce_ms = 50,
  auto = true,
  hl_group = 'FimtuneSuggestion', -- linked to Comment unless defined
  -- nil: use vim.lsp.inline_completion where it exists (Neovim 0.12+); false: always draw ghost text ourselves
  native = nil,
}

M.config = vim.deepcopy(defaults)
M.status = {} ---@type table<integer, table> client id -> last `fimtune/status`
local legacy_client_id = nil ---@type integer?
local timer = nil
local shown = nil -- the suggestion on screen: {bufnr, row, col, end_col, text, command, client_id, extmark}
local pending = nil -- the request in flight: {client_id, id}

local function has(version)
  return vim.fn.has('nvim-' .. version) == 1
end

-- Client methods became `client:method()` in 0.11 (the `client.method()` form warns there).
local function call(client, method, ...)
  if has('0.11') then
    return client[method](client, ...)
  end
  return client[method](...)
end

local function get_clients()
  local list = vim.lsp.get_clients and vim.lsp.get_clients() or vim.lsp.get_active_clients()
  return vim.tbl_filter(function(c)
    return c.name == NAME
  end, list)
end

local function client_for(bufnr)
  for _, client in ipairs(get_clients()) do
    if (vim.lsp.buf_is_attached and vim.lsp.buf_is_attached(bufnr, client.id)) or client.attached_buffers[bufnr] then
      return client
    end
  end
  return nil
end

local function use_native()
  if M.config.native == false then
    return false
  end
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

--- Whether fimtune should run for this buffer: a file on disk (or to be), of an enabled filetype.
local function eligible(bufnr)
  if not api.nvim_buf_is_valid(bufnr) or vim.bo[bufnr].buftype ~= '' or api.nvim_buf_get_name(bufnr) == '' then
    return false
  end
  local fts = M.config.filetypes
  return fts == nil or vim.tbl_contains(fts, vim.bo[bufnr].filetype)
end

-- Ghost text ------------------------------------------------------------------------------------------------------

local function stop_timer()
  if timer then
    timer:stop()
  end
end

local function cancel_pending()
  if pending then
    local client = vim.lsp.get_client_by_id(pending.client_id)
    if client then
      call(client, 'cancel_request', pending.id)
    end
    pending = nil
  end
end

--- Clears the suggestion on screen and any request in flight.
function M.dismiss()
  if use_native() then
    local bufnr = api.nvim_get_current_buf()
    if vim.lsp.inline_completion.is_enabled({ bufnr = bufnr }) then
      vim.lsp.inline_completion.enable(false, { bufnr = bufnr })
      vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    end
    return
  end
  stop_timer()
  cancel_pending()
  if shown and api.nvim_buf_is_valid(shown.bufnr) then
    api.nvim_buf_clear_namespace(shown.bufnr, ns, 0, -1)
  end
  shown = nil
end

--- The suggestion on screen (the text that accept() inserts), or nil.
function M.current()
  if use_native() then
    local bufnr = api.nvim_get_current_buf()
    local native_ns = api.nvim_get_namespaces()['nvim.lsp.inline_completion']
    local marks = native_ns and api.nvim_buf_get_extmarks(bufnr, native_ns, 0, -1, { details = true }) or {}
    if #marks == 0 then
      return nil
    end
    local details = marks[1][4]
    local lines = { (details.virt_text or { { '' } })[1][1] }
    for _, chunks in ipairs(details.virt_lines or {}) do
      lines[#lines + 1] = chunks[1] and chunks[1][1] or ''
    end
    return table.concat(lines, '\n')
  end
  return shown and shown.text or nil
end

local function draw(bufnr, row, col, text)
  local tab = string.rep(' ', vim.bo[bufnr].tabstop)
  local lines = vim.split(text, '\n', { plain = true })
  local hl = M.config.hl_group
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
  local opts = {
    virt_text = { { (lines[1]:gsub('\t', tab)), hl } },
    -- inline virtual text arrived in 0.10; before it, overlay works at the end of a line and eol elsewhere
    virt_text_pos = has('0.10') and 'inline' or (col >= #line and 'overlay' or 'eol'),
    hl_mode = 'combine',
  }
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      opts.virt_lines[#opts.virt_lines + 1] = { { (lines[i]:gsub('\t', tab)), hl } }
    end
  end
  return api.nvim_buf_set_extmark(bufnr, ns, row, col, opts)
end

--- An LSP position's character (in the client's encoding) as a byte column of its line.
local function byte_col(bufnr, position, encoding)
  local line = api.nvim_buf_get_lines(bufnr, position.line, position.line + 1, false)[1] or ''
  if encoding == 'utf-8' then
    return math.min(position.character, #line)
  end
  local ok, col
  if has('0.11') then
    ok, col = pcall(vim.str_byteindex, line, encoding, position.character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, position.character, encoding == 'utf-16')
  end
  return ok and col or #line
end

--- The first usable item of an inlineCompletion result, as text to insert at the cursor (byte col `col`).
local function pick(result, bufnr, row, col, encoding)
  local list = result and (result.items or result) or {}
  for _, item in ipairs(list) do
    local text = type(item.insertText) == 'table' and item.insertText.value or item.insertText
    local start_col, end_col = col, col
    if type(text) == 'string' and item.range then
      if item.range.start.line ~= row or item.range['end'].line ~= row then
        text = nil -- a multi-line replacement cannot be shown as ghost text
      else
        start_col = byte_col(bufnr, item.range.start, encoding)
        end_col = byte_col(bufnr, item.range['end'], encoding)
      end
    end
    if type(text) == 'string' and start_col <= col and end_col >= col then
      -- the range may start before the cursor: the part already typed must match, the rest is the suggestion
      local typed = api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]:sub(start_col + 1, col)
      if text:sub(1, #typed) == typed and #text > #typed then
        return { text = text:sub(#typed + 1), end_col = end_col, command = item.command }
      end
    end
  end
  return nil
end

--- Asks the server for a suggestion at the cursor now; it is drawn when it arrives if nothing moved meanwhile.
function M.request()
  if use_native() then
    if M.current() == nil then
      vim.lsp.inline_completion.get()
    end
    return
  end
  M.dismiss()
  local bufnr = api.nvim_get_current_buf()
  local client = client_for(bufnr)
  if not client then
    return
  end
  local win = api.nvim_get_current_win()
  local cursor = api.nvim_win_get_cursor(win)
  local row, col = cursor[1] - 1, cursor[2]
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = 1 } -- Invoked
  local ok, id
  ok, id = call(client, 'request', 'textDocument/inlineCompletion', params, function(err, result)
    if not pending or pending.id ~= id then
      return -- superseded or cancelled
    end
    pending = nil
    if err or api.nvim_get_current_buf() ~= bufnr or api.nvim_buf_get_changedtick(bufnr) ~= tick then
      return
    end
    local now = api.nvim_win_get_cursor(0)
    if now[1] - 1 ~= row or now[2] ~= col then
      return
    end
    local item = pick(result, bufnr, row, col, client.offset_encoding)
    if item then
      item.bufnr, item.row, item.col, item.client_id = bufnr, row, col, client.id
      item.extmark = draw(bufnr, row, col, item.text)
      shown = item
    end
  end, bufnr)
  if ok then
    pending = { client_id = client.id, id = id, bufnr = bufnr, tick = tick }
  end
end

--- Inserts the suggestion at its position, moves the cursor after it and tells the server. Returns whether it did.
function M.accept()
  if use_native() then
    return vim.lsp.inline_completion.get() == true
  end
  local s = shown
  if not s then
    return false
  end
  M.dismiss()
  local lines = vim.split(s.text, '\n', { plain = true })
  api.nvim_buf_set_text(s.bufnr, s.row, s.col, s.row, s.end_col, lines)
  local last = #lines == 1 and s.col + #lines[1] or #lines[#lines]
  api.nvim_win_set_cursor(0, { s.row + #lines, last })
  local client = vim.lsp.get_client_by_id(s.client_id)
  if client and s.command then
    local command = { command = s.command.command, arguments = s.command.arguments }
    call(client, 'request', 'workspace/executeCommand', command, function() end, s.bufnr)
  end
  return true
end

local function schedule_request()
  stop_timer()
  if not M.config.auto or M.config.debounce_ms == false then
    return
  end
  timer = timer or uv.new_timer()
  timer:start(M.config.debounce_ms, 0, vim.schedule_wrap(function()
    if api.nvim_get_mode().mode:sub(1, 1) == 'i' then
      M.request()
    end
  end))
end

local function attach_ghost_text(bufnr)
  local group = api.nvim_create_augroup('fimtune.buffer.' .. bufnr, { clear = true })
  local function on(events, callback)
    api.nvim_create_autocmd(events, { group = group, buffer = bufnr, callback = callback })
  end
  on({ 'InsertEnter', 'TextChangedI', 'TextChangedP' }, function()
    local tick = api.nvim_buf_get_changedtick(bufnr)
    if pending and pending.bufnr == bufnr and pending.tick == tick then
      return -- the request in flight already saw this text (e.g. it was asked right after accept())
    end
    M.dismiss()
    schedule_request()
  end)
  on({ 'CursorMovedI', 'CursorMoved' }, function()
    local cursor = api.nvim_win_get_cursor(0)
    if shown and (cursor[1] - 1 ~= shown.row or cursor[2] ~= shown.col) then
      M.dismiss()
    end
  end)
  on({ 'InsertLeave', 'BufLeave' }, function()
    M.dismiss()
  end)
end

-- Server ----------------------------------------------------------------------------------------------------------

local function on_attach(client, bufnr)
  if use_native() then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  else
    attach_ghost_text(bufnr)
  end
end

-- An empty Lua table would be sent as a JSON array; the server wants an object.
local function json_object(t)
  return next(t) == nil and vim.empty_dict() or t
end

local function client_config()
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  capabilities.textDocument.inlineCompletion = capabilities.textDocument.inlineCompletion
    or { dynamicRegistration = false }
  return {
    name = NAME,
    cmd = M.config.cmd,
    init_options = json_object(M.config.settings),
    capabilities = capabilities,
    on_attach = on_attach,
    handlers = {
      ['fimtune/status'] = function(_, result, ctx)
        M.status[ctx.client_id] = result
      end,
    },
  }
end

local function legacy_attach(bufnr)
  if not eligible(bufnr) then
    return
  end
  local client = legacy_client_id and vim.lsp.get_client_by_id(legacy_client_id)
  if not client then
    local config = client_config()
    config.root_dir = M.config.root_dir
    legacy_client_id = vim.lsp.start_client(config)
  end
  if legacy_client_id then
    vim.lsp.buf_attach_client(bufnr, legacy_client_id)
  end
end

--- Sends new server settings (merged into the ones given to setup) to the running server.
function M.configure(settings)
  M.config.settings = vim.tbl_deep_extend('force', M.config.settings, settings or {})
  for _, client in ipairs(get_clients()) do
    call(client, 'notify', 'workspace/didChangeConfiguration', { settings = { fimtune = json_object(M.config.settings) } })
  end
end

local function map_accept_key()
  local key = M.config.accept_key
  if not key then
    return
  end
  vim.keymap.set('i', key, function()
    if use_native() then
      if not vim.lsp.inline_completion.get() then
        return key
      end
      return ''
    end
    if M.current() then
      return '<Cmd>lua require("fimtune").accept()<CR>'
    end
    return key
  end, { expr = true, silent = true, desc = 'fimtune: accept the suggestion' })
end

--- Starts the server for the buffers it should serve and shows its suggestions. See the README for the options.
function M.setup(opts)
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(defaults), opts or {})
  M.config.root_dir = M.config.root_dir or uv.cwd()
  if vim.fn.executable(M.config.cmd[1]) ~= 1 then
    vim.notify(
      ('fimtune: `%s` is not executable: install fimtune (pip install fimtune) or give its path, '
        .. "e.g. require('fimtune').setup({ cmd = { '/path/to/.venv/bin/fimtune', 'serve' } })"):format(
        M.config.cmd[1]
      ),
      vim.log.levels.ERROR
    )
    return
  end
  if vim.fn.hlexists(M.config.hl_group) == 0 or M.config.hl_group == defaults.hl_group then
    api.nvim_set_hl(0, M.config.hl_group, { link = 'Comment', default = true })
  end
  map_accept_key()

  if vim.lsp.config and vim.lsp.enable then
    local config = client_config()
    config.root_dir = function(bufnr, on_dir)
      if eligible(bufnr) then
        on_dir(M.config.root_dir)
      end
    end
    config.filetypes = M.config.filetypes
    vim.lsp.config(NAME, config)
    vim.lsp.enable(NAME)
    return
  end
  local group = api.nvim_create_augroup('fimtune.start', { clear = true })
  api.nvim_create_autocmd({ 'FileType', 'BufReadPost', 'BufNewFile' }, {
    group = group,
    callback = function(args)
      legacy_attach(args.buf)
    end,
  })
  for _, bufnr in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(bufnr) then
      legacy_attach(bufnr)
    end
  end
end

--- The running fimtune clients (for :checkhealth and tests).
M.clients = get_clients
M._call = call

return M
