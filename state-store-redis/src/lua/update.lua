local cur = redis.call('GET', KEYS[1])
if not cur or redis.sha1hex(cur) ~= ARGV[2] then return 0 end
if ARGV[4] == '1' then redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
elseif ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[1])
else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) end
return 1
