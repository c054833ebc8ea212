-- File a request (kind=request) or start a customer admin's impersonation (kind=impersonation).
-- ARGV[3] = JSON of the request's fields; ARGV[4] = created_at score.
if redis.call('EXISTS', k.request) == 1 then return fail('duplicate_id', 'request id in use') end
local fields = cjson.decode(ARGV[3])
if live_elsewhere(k.live_grant, now, fields.id) then
  return fail('live_grant_exists', 'a live grant for this org already exists')
end
local flat = {}
for name, value in pairs(fields) do flat[#flat + 1] = name; flat[#flat + 1] = value end
redis.call('HSET', k.request, unpack(flat))
local r = hash_of(k.request)
redis.call('ZADD', k.org_requests, now, r.id)
redis.call('ZADD', k.staff_requests, now, r.id)
remember(k.history, now, 'filed', r.requester_key, r.justification, r.duration_s, r.scope)
emit(k.outbox, k.channel, 'filed', r, now, r.requester_key, '')
if r.kind == 'impersonation' then
  local expires = start_grant(k, r, now, r.requester_key)
  return done({state = 'approved', expires_at = expires})
end
redis.call('ZADD', k.pending, r.lapses_at, r.id)
return done({state = 'pending'})
