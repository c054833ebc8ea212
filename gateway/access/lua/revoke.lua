-- End a live grant now: any approver of the org (ARGV 5 = their org), or the requester.
-- ARGV: 3 actor id, 4 actor key, 5 actor org ('' for staff), 6 comment.
local r = hash_of(k.request)
if not r then return fail('not_found', 'no such request') end
local is_requester = r.requester_key == ARGV[4]
if not is_requester and r.org ~= ARGV[5] then return fail('not_found', 'no such request') end
-- SECURITY: only the requester or an approver in force now may revoke.
if not is_requester and not may_decide(k.approvers, k.member, ARGV[3]) then
  return fail('not_approver', 'only the org\'s approvers or the requester revoke a grant')
end
if r.state ~= 'approved' then return fail('wrong_state', 'the request is ' .. r.state) end
if tonumber(now) >= tonumber(r.expires_at) then
  end_grant(k, r, now, 'expired', 'gateway', '')
  return fail('wrong_state', 'the grant had already expired')
end
end_grant(k, r, now, 'revoked', ARGV[4], ARGV[6])
return done({state = 'revoked'})
