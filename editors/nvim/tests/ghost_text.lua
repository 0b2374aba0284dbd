-- Headless end-to-end test of the fimtune plugin against the real `fimtune serve` with the deterministic fixed engine.
-- Run: nvim --headless -u NONE -i NONE --cmd "set rtp^=$PWD/editors/nvim" -c 'luafile editors/nvim/tests/ghost_text.lua'
-- Needs `fimtune` on PATH (or FIMTUNE_COMMAND). Exits 0 when every check passes, 1 otherwise.
local uv = vim.uv or vim.loop
local api = vim.api

local SUGGESTION = 'return a + b'
local failures, checks = 0, 0
local co

local function log(msg)
  io.stderr:write(msg .. '\n')
end

local function finish()
  log(('%s: %d checks, %d failed (Neovim %s)'):format(
    failures == 0 and 'PASS' or 'FAIL',
    checks,
    failures,
    vim.fn.execute('version'):match('NVIM v(%S+)')
  ))
  vim.cmd(failures == 0 and 'qall!' or 'cquit 1')
end

local function check(cond, what, detail)
  checks = checks + 1
  if not cond then
    failures = failures + 1
    log('FAILED: ' .. what .. (detail ~= nil and (' -- ' .. vim.inspect(detail)) or ''))
  else
    log('ok: ' .. what)
  end
  return cond
end

local function resume()
  local ok, err = coroutine.resume(co)
  if not ok then
    failures = failures + 1
    log('ERROR: ' .. tostring(err) .. '\n' .. debug.traceback(co))
    finish()
  end
end

-- Yields to Neovim's main loop (input, LSP messages, timers, autocommands) until cond() holds or the timeout passes.
local function wait(cond, timeout_ms)
  local deadline = uv.now() + (timeout_ms or 5000)
  while not cond() do
    uv.update_time()
    if uv.now() > deadline then
      return false
    end
    vim.defer_fn(resume, 20)
    coroutine.yield()
  end
  return true
end

local function sleep(ms)
  local until_ms = uv.now() + ms
  wait(function()
    uv.update_time()
    return uv.now() >= until_ms
  end, ms + 1000)
end

local ns = api.nvim_create_namespace('fimtune.suggestion')
local function marks()
  return api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
end

local function line(n)
  return api.nvim_buf_get_lines(0, n - 1, n, true)[1]
end

-- Insert mode at (row, col): where a user's cursor is when a suggestion matters (normal mode clamps the column).
local function insert_at(row, col)
  if api.nvim_get_mode().mode ~= 'i' then
    api.nvim_input('i')
    wait(function()
      return api.nvim_get_mode().mode == 'i'
    end)
  end
  api.nvim_win_set_cursor(0, { row, col })
end

-- New server settings; waits until the server reports the rebuilt engine ready.
local function reconfigure(settings)
  local fimtune = require('fimtune')
  local client = fimtune.clients()[1]
  fimtune.status[client.id] = nil
  fimtune.configure(settings)
  check(wait(function()
    local status = fimtune.status[client.id]
    return status ~= nil and status.state == 'ready'
  end), 'the engine reloaded with ' .. vim.inspect(settings, { newline = ' ', indent = '' }))
end

local function test()
  local fimtune = require('fimtune')
  local dir = vim.fn.tempname()
  vim.fn.mkdir(dir, 'p')
  local path = dir .. '/calc.py'
  vim.fn.writefile({ 'def add(a, b):', '    ', '', '', 'print(add(1, 2))' }, path)
  vim.cmd('cd ' .. vim.fn.fnameescape(dir))

  local telemetry = dir .. '/telemetry.jsonl'
  vim.cmd('filetype on') -- as in any user config (-u NONE leaves it off)
  local command = os.getenv('FIMTUNE_COMMAND') or 'fimtune'
  fimtune.setup({
    cmd = { command, 'serve' },
    settings = {
      engine = 'fixed',
      fixed = { text = SUGGESTION },
      debounceMs = 0,
      context = { enabled = false },
      telemetry = { path = telemetry },
    },
    debounce_ms = 30,
    auto = false, -- the first checks ask with request(); typing turns it on below
  })
  vim.cmd('edit ' .. vim.fn.fnameescape(path))
  local bufnr = api.nvim_get_current_buf()

  local ready = wait(function()
    local client = fimtune.clients()[1]
    local status = client and fimtune.status[client.id]
    return status ~= nil and status.state == 'ready' and client.attached_buffers[bufnr] ~= nil
  end, 30000)
  local client = fimtune.clients()[1]
  if not check(ready, 'server started, attached and reported ready', client and fimtune.status[client.id]) then
    return
  end
  check(fimtune.status[client.id].engine == 'fixed', 'status names the fixed engine', fimtune.status[client.id])

  -- request(): the suggestion is drawn at the cursor and current() returns it
  insert_at(2, 4)
  fimtune.request()
  check(wait(function()
    return fimtune.current() ~= nil
  end), 'request() shows a suggestion')
  check(fimtune.current() == SUGGESTION, 'current() is the suggestion', fimtune.current())
  local shown = marks()
  check(#shown == 1 and shown[1][2] == 1 and shown[1][3] == 4, 'one extmark at the cursor', shown)
  check(shown[1] and shown[1][4].virt_text[1][1] == SUGGESTION, 'ghost text is the suggestion', shown[1])

  -- accept() inserts it, moves the cursor after it and clears the ghost text
  check(fimtune.accept() == true, 'accept() reports it inserted')
  check(line(2) == '    ' .. SUGGESTION, 'accept() put the suggestion in the buffer', line(2))
  check(vim.deep_equal(api.nvim_win_get_cursor(0), { 2, 4 + #SUGGESTION }), 'cursor after the inserted text')
  check(fimtune.current() == nil and #marks() == 0, 'nothing shown after accept()', marks())
  check(fimtune.accept() == false, 'accept() without a suggestion does nothing')
  -- the server learns about it (workspace/executeCommand fimtune.accepted): its telemetry records the shown id
  local events = {}
  wait(function()
    events = {}
    for _, raw in ipairs(vim.fn.filereadable(telemetry) == 1 and vim.fn.readfile(telemetry) or {}) do
      local event = vim.fn.json_decode(raw)
      events[event.event] = events[event.event] or {}
      table.insert(events[event.event], event.id)
    end
    return events.accepted ~= nil
  end)
  check(
    events.accepted and #events.accepted == 1 and vim.tbl_contains(events.shown or {}, events.accepted[1]),
    'the server recorded the accepted suggestion',
    events
  )

  -- dismiss() clears a shown suggestion
  insert_at(3, 0)
  fimtune.request()
  check(wait(function()
    return fimtune.current() ~= nil
  end), 'a second request() shows a suggestion')
  fimtune.dismiss()
  check(fimtune.current() == nil and #marks() == 0, 'dismiss() clears it', marks())
  sleep(200)
  check(#marks() == 0, 'nothing comes back after dismiss()', marks())

  -- moving the cursor clears it
  fimtune.request()
  check(wait(function()
    return fimtune.current() ~= nil
  end), 'a third request() shows a suggestion')
  api.nvim_win_set_cursor(0, { 1, 0 })
  check(wait(function()
    return fimtune.current() == nil and #marks() == 0
  end), 'moving the cursor clears it')

  -- typing in insert mode asks by itself (debounced); Tab accepts; leaving insert mode clears
  api.nvim_input('<Esc>')
  wait(function()
    return api.nvim_get_mode().mode == 'n'
  end)
  fimtune.config.auto = true
  reconfigure({ fixed = { text = '1 + 2' } })
  api.nvim_win_set_cursor(0, { 3, 0 })
  api.nvim_input('iy = ')
  check(wait(function()
    return api.nvim_get_mode().mode == 'i' and line(3) == 'y = ' and fimtune.current() ~= nil
  end), 'typing shows a suggestion', { mode = api.nvim_get_mode().mode, line = line(3) })
  check(fimtune.current() == '1 + 2', 'it is the new suggestion', fimtune.current())
  api.nvim_input('<Tab>')
  check(wait(function()
    return line(3) == 'y = 1 + 2'
  end), 'Tab accepts the suggestion', line(3))
  check(api.nvim_get_mode().mode == 'i', 'still in insert mode after Tab')
  api.nvim_input('<Esc>')
  check(wait(function()
    return api.nvim_get_mode().mode == 'n' and fimtune.current() == nil and #marks() == 0
  end), 'leaving insert mode clears it', marks())

  -- without a suggestion Tab is a normal Tab
  reconfigure({ fixed = { text = '' } })
  api.nvim_win_set_cursor(0, { 4, 0 })
  api.nvim_input('i')
  sleep(300) -- the automatic request after InsertEnter answers nothing
  check(fimtune.current() == nil, 'an empty answer shows nothing', fimtune.current())
  api.nvim_input('<Tab>y<Esc>')
  check(wait(function()
    return line(4) == '\ty'
  end), 'Tab without a suggestion inserts a Tab', line(4))

  -- multi-line suggestions: first line at the cursor, the rest as virtual lines; accept() inserts all of it
  local multi = 'total = a + b\n    return total'
  reconfigure({ fixed = { text = multi } })
  api.nvim_buf_set_lines(0, 1, 2, true, { '    ' })
  insert_at(2, 4)
  fimtune.request()
  check(wait(function()
    return fimtune.current() ~= nil
  end), 'a multi-line suggestion is shown')
  check(fimtune.current() == multi, 'current() is the whole multi-line suggestion', fimtune.current())
  shown = marks()
  local details = shown[1] and shown[1][4] or {}
  check(
    details.virt_text and details.virt_text[1][1] == 'total = a + b'
      and details.virt_lines and #details.virt_lines == 1
      and details.virt_lines[1][1][1] == '    return total',
    'first line as virtual text, the rest as virtual lines',
    details
  )
  fimtune.accept()
  check(line(2) == '    total = a + b' and line(3) == '    return total', 'accept() inserts every line', {
    line(2),
    line(3),
  })
  check(vim.deep_equal(api.nvim_win_get_cursor(0), { 3, #'    return total' }), 'cursor at the end of the insert')

  api.nvim_input('<Esc>')
  wait(function()
    return api.nvim_get_mode().mode == 'n'
  end)

  -- :checkhealth fimtune reports the server and its engine
  vim.cmd('checkhealth fimtune')
  local report = table.concat(api.nvim_buf_get_lines(0, 0, -1, false), '\n')
  check(report:find('ready, engine fixed', 1, true) ~= nil, ':checkhealth fimtune reports ready and the engine', report)
  check(report:find('ERROR', 1, true) == nil, ':checkhealth fimtune has no error', report)
end

vim.defer_fn(function()
  log('FAILED: the test did not finish within 90 s')
  failures = failures + 1
  finish()
end, 90000)

co = coroutine.create(function()
  test()
  finish()
end)
vim.schedule(resume)
