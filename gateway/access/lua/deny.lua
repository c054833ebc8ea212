-- One approver denies; one denial ends the request. ARGV: 3 approver id, 4 key, 5 org, 6 comment.
local r = hash_of(k.request)
if not r or r.org ~= ARGV[5] then return fail('not_found', 'no such request') end
if r.state ~= 'pending' then return fail('wrong_state', 'the request is ' .. r.state) end
if tonumber(now) >= tonumber(r.lapses_at) then
  lapse(k, r, now)
  return fail('wrong_state', 'the request lapsed before it was decided')
end
-- SECURITY: nobody decides their own request; only approvers in force now decide.
if r.requester_key == ARGV[4] then return fail('self_approval', 'nobody decides their own request') end
if not may_decide(k.approvers, k.member, ARGV[3]) then
  return fail('not_approver', 'only the org\'s approvers decide requests')
end
redis.call('HSET', k.request, 'state', 'denied', 'ended_at', now, 'ended_by', ARGV[4])
redis.call('ZREM', k.pending, r.id)
remember(k.history, now, 'denied', ARGV[4], ARGV[6])
emit(k.outbox, k.channel, 'denied', r, now, ARGV[4], ARGV[6])
return done({state = 'denied'})
