-- One approver approves. ARGV: 3 approver id, 4 approver key, 5 approver org, 6 comment,
-- 7 duration_s ('' keeps), 8 scope ('' keeps), 9 member key template, 10 approvals the org
-- requires now, 11 the longest duration the org allows now. Shortest duration and
-- narrowest scope apply; the grant starts at the final approval.
local r, refused = decidable_request(k, now, ARGV[3], ARGV[4], ARGV[5],
  'nobody approves their own request')
if not r then return refused end
if redis.call('SISMEMBER', k.approvals, ARGV[3]) == 1 then
  return fail('already_approved', 'each approver counts once')
end
local duration = r.duration_s
if ARGV[7] ~= '' then
  if tonumber(ARGV[7]) > tonumber(r.requested_duration_s) then
    return fail('invalid_duration', 'an approver may shorten the duration, not extend it')
  end
  if tonumber(ARGV[7]) < tonumber(duration) then duration = ARGV[7] end
end
-- SECURITY: the org's rules in force now apply: a maximum lowered since the filing caps
-- the duration, and approvals required raised since are required.
if tonumber(duration) > tonumber(ARGV[11]) then duration = ARGV[11] end
local required = math.max(tonumber(r.approvals_required), tonumber(ARGV[10]))
r.approvals_required = tostring(required)
local scope = r.scope
if ARGV[8] ~= '' then
  if ARGV[8] == 'write' and r.requested_scope == 'read' then
    return fail('invalid_scope', 'an approver may narrow the scope, not widen it')
  end
  if ARGV[8] == 'read' then scope = 'read' end
end
-- Earlier approvals count only if their approvers are still approvers now (ARGV[9] is the
-- member key template): the list in force at the final decision is the one that counts.
-- SECURITY: approvals count people, not accounts: accounts linked as one person (as the
-- links are stored now) count once, and an approval by an account linked to the requester
-- since it was given counts for nothing.
local me = person_of(k.member, ARGV[4])
local requester = person_of(k.requester_account, r.requester_key)
local counted = {[me] = true}
local count = 1
for _, earlier in ipairs(redis.call('SMEMBERS', k.approvals)) do
  local earlier_key = string.gsub(ARGV[9], '{id}', earlier)
  if may_decide(k.approvers, earlier_key, earlier) then
    local who = person_of(earlier_key, 'member:' .. r.org .. ':' .. earlier)
    if who == me then
      return fail('already_approved', 'each person counts once; another account of this ' ..
        'person has approved already')
    end
    if who ~= requester and not counted[who] then
      counted[who] = true
      count = count + 1
    end
  end
end
local final = count >= required
if final and live_elsewhere(k.live_grant, now, r.id) then
  return fail('live_grant_exists', 'the requester already has a live grant for this org')
end
redis.call('SADD', k.approvals, ARGV[3])
redis.call('HSET', k.request, 'duration_s', duration, 'scope', scope,
  'approvals_required', r.approvals_required)
r.duration_s = duration
r.scope = scope
remember(k.history, now, 'approval', ARGV[4], ARGV[6], ARGV[7], ARGV[8])
-- The count and the number required travel with the event: a partial approval is mailed
-- to the approvers as "1 of 2 approvals given".
emit(k.outbox, k.channel, 'approval', r, now, ARGV[4], ARGV[6],
  {'approvals', tostring(count), 'required', r.approvals_required})
if not final then
  return done({state = 'pending', approvals = count})
end
local expires = start_grant(k, r, now, ARGV[4])
return done({state = 'approved', approvals = count, expires_at = expires})
