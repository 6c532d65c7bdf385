-- GCRA on the server's clock; the arithmetic is state_store_core::gcra_step's, and the
-- crate's tests run both on the same inputs. ARGV[5], when given, is `now` in µs (tests).
local now
if ARGV[5] then
  now = tonumber(ARGV[5])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tolerance = interval * burst
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  tat = tonumber(stored)
  if not tat then return redis.error_reply('ERR value is not an integer or out of range') end
end
if tat < now then tat = now end
local new_tat = tat + interval * cost
if new_tat - now <= tolerance then
  if ARGV[4] == '1' then
    redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
  end
  return {1, math.floor((tolerance - (new_tat - now)) / interval), -1, new_tat - now}
end
local retry = -1
if cost <= burst then retry = new_tat - now - tolerance end
return {0, math.floor(math.max(0, tolerance - (tat - now)) / interval), retry, tat - now}
