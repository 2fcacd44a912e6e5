-- wrk script: viewers walking a live HLS stream, as players do.
--
-- Each wrk thread plays NPLAYERS virtual viewers in turn (wrk hands this
-- script a connection whenever one is free). A viewer session: the master
-- playlist, the media playlist, the three newest segments (players start
-- three target durations behind live), then POLLS reloads of the media
-- playlist, each followed by any segment published since; then a new session.
-- The live edge is computed from the clock, as benchmarks/speed/origin.py
-- publishes segment N at N * TARGET seconds; viewers stay LAG segments behind
-- it, so every segment they ask for is announced by playlists every cache has.

local TARGET, LAG, POLLS, NPLAYERS = 2, 2, 3, 64
local players = {}
local turn = 0

local function newest()
  return math.floor(os.time() / TARGET) - LAG
end

function init(args)
  for i = 1, NPLAYERS do
    players[i] = { step = "master", next_seg = 0, polls = 0 }
  end
end

local function path(p)
  if p.step == "master" then
    p.step = "playlist"
    return "/live/master.m3u8"
  elseif p.step == "playlist" then
    if p.polls == 0 then p.next_seg = newest() - 2 end
    p.polls = p.polls + 1
    p.step = "segments"
    return "/live/720p/index.m3u8"
  else -- segments
    if p.next_seg <= newest() then
      local n = p.next_seg
      p.next_seg = n + 1
      return "/live/720p/seg" .. n .. ".ts"
    end
    if p.polls > POLLS then
      p.step, p.polls = "master", 0
    else
      p.step = "playlist"
    end
    return path(p)
  end
end

function request()
  turn = turn % NPLAYERS + 1
  return wrk.format("GET", path(players[turn]))
end

-- Counts per status, so a run that got errors is visible (wrk reports non-2xx).
