-- A headless Ardour 7 session around the SongGen VST3, for tests/tests/host_ardour.rs.
-- Usage: ardour7-lua ardour_session.lua MODE SESSION_DIR SESSION_NAME [MAIN_OUTPUT]
--   create: new session (dummy backend), a stereo track with SongGen inserted, roll 3 s
--           (printing the DSP load), set "Main output" to MAIN_OUTPUT, save.
--   reload: load the session, print SongGen's parameters, roll 1 s, save again.
-- Everything goes to stderr, flushed per line (Ardour may crash on exit and lose stdout).

local function say(...)
  local t = {}
  for i = 1, select("#", ...) do t[#t + 1] = tostring((select(i, ...))) end
  io.stderr:write(table.concat(t, " ") .. "\n")
  io.stderr:flush()
end

local mode, dir, name, main_output = arg[1], arg[2], arg[3], tonumber(arg[4] or "")

local function songgen_insert(route)
  for i = 0, 16 do
    local proc = route:nth_plugin(i)
    if proc:isnil() then break end
    if proc:display_name() == "SongGen" then return proc end
  end
  return nil
end

local function param_index(pi, label)
  for i = 0, pi:parameter_count() - 1 do
    if pi:parameter_is_input(i) and pi:parameter_label(i) == label then return i end
  end
  return nil
end

local function print_params(proc)
  local pi = proc:to_insert():plugin(0)
  for i = 0, pi:parameter_count() - 1 do
    if pi:parameter_is_input(i) then
      local value = ARDOUR.LuaAPI.get_processor_param(proc, i, true)
      say("param", pi:parameter_label(i), value)
    end
  end
end

local function roll(seconds, tag)
  Session:request_roll(ARDOUR.TransportRequestSource.TRS_UI)
  local max = 0
  for i = 1, math.floor(seconds * 10) do
    ARDOUR.LuaAPI.usleep(100000)
    local load = AudioEngine:get_dsp_load()
    if load > max then max = load end
  end
  say(tag, string.format("%.2f", max))
  say("rolling", Session:transport_rolling(), "at", Session:transport_sample())
  Session:request_stop(false, false, ARDOUR.TransportRequestSource.TRS_UI)
  ARDOUR.LuaAPI.usleep(200000)
end

AudioEngine:set_backend("None (Dummy)", "", "")

if mode == "create" then
  if not create_session(dir, name, 48000) then say("ERROR: create_session failed"); os.exit(3) end
  local tracks = Session:new_audio_track(2, 2, nil, 1, "Song",
    ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal, true)
  local track = tracks:front()
  local proc = ARDOUR.LuaAPI.new_plugin(Session, "SongGen", ARDOUR.PluginType.VST3, "")
  if proc:isnil() then say("ERROR: no VST3 plugin SongGen"); close_session(); os.exit(4) end
  if track:add_processor_by_index(proc, 0, nil, true) ~= 0 then
    say("ERROR: could not insert SongGen"); close_session(); os.exit(5)
  end
  roll(3.0, "dsp_max_first_3s")
  roll(2.0, "dsp_max_later_2s")
  local pi = proc:to_insert():plugin(0)
  local idx = param_index(pi, "Main output")
  if idx == nil then say("ERROR: no parameter Main output"); close_session(); os.exit(6) end
  if main_output then
    say("set_main_output", ARDOUR.LuaAPI.set_processor_param(proc, idx, main_output))
    -- Parameter changes reach a VST3 through process(); let a few cycles run.
    ARDOUR.LuaAPI.usleep(500000)
  end
  print_params(proc)
  Session:save_state("", false, false, false, false, false)
  say("saved")
  close_session()
elseif mode == "reload" then
  if not load_session(dir, name) then say("ERROR: load_session failed"); os.exit(3) end
  local route = Session:route_by_name("Song")
  if route:isnil() then say("ERROR: no track Song"); close_session(); os.exit(4) end
  local proc = songgen_insert(route)
  if proc == nil then say("ERROR: SongGen not in the reloaded session"); close_session(); os.exit(5) end
  print_params(proc)
  roll(1.0, "dsp_max_reload_1s")
  Session:save_state("", false, false, false, false, false)
  say("saved")
  close_session()
else
  say("ERROR: unknown mode", mode)
  os.exit(2)
end
say("done")
