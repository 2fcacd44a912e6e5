-- wrk script: each connection sends DEPTH requests for the URL's path in one
-- write (HTTP/1.1 pipelining) and reads the DEPTH answers. The client then
-- spends a fraction of a server's work per request, so on a small machine
-- the servers, not wrk, use up the cores.

local DEPTH = 16

function init(args)
  local batch = {}
  for i = 1, DEPTH do
    batch[i] = wrk.format(nil)
  end
  req = table.concat(batch)
end

function request()
  return req
end
