-- The requester withdraws a pending request. ARGV: 3 requester key, 4 comment.
local r = hash_of(k.request)
if not r or r.requester_key ~= ARGV[3] then return fail('not_found', 'no such request') end
if r.state ~= 'pending' then return fail('wrong_state', 'the request is ' .. r.state) end
if tonumber(now) >= tonumber(r.lapses_at) then
  lapse(k, r, now)
  return fail('wrong_state', 'the request lapsed before it was cancelled')
end
redis.call('HSET', k.request, 'state', 'cancelled', 'ended_at', now, 'ended_by', ARGV[3])
redis.call('ZREM', k.pending, r.id)
remember(k.history, now, 'cancelled', ARGV[3], ARGV[4])
emit(k.outbox, k.channel, 'cancelled', r, now, ARGV[3], ARGV[4])
return done({state = 'cancelled'})
