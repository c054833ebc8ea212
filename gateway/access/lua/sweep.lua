-- The sweeper's time-driven transitions for one request: lapse a pending request whose time
-- is up, expire a grant whose duration is over. Anything else is left alone.
local r = hash_of(k.request)
if not r then
  redis.call('ZREM', k.pending, ARGV[3])
  redis.call('ZREM', k.live_grants, ARGV[3])
  return done({state = 'gone'})
end
if r.state == 'pending' and tonumber(now) >= tonumber(r.lapses_at) then
  lapse(k, r, now)
  return done({state = 'lapsed'})
end
if r.state == 'approved' and tonumber(now) >= tonumber(r.expires_at) then
  end_grant(k, r, now, 'expired', 'gateway', '')
  return done({state = 'expired'})
end
if r.state ~= 'pending' then redis.call('ZREM', k.pending, r.id) end
if r.state ~= 'approved' then redis.call('ZREM', k.live_grants, r.id) end
return done({state = r.state})
