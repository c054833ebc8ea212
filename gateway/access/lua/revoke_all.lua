-- An org admin ends every live grant of the org in one step. KEYS[9] = org live set,
-- KEYS[4]/[5] approvers and the admin's member hash, KEYS[7] live grants, KEYS[10] outbox.
-- ARGV: 3 admin id, 4 admin key, 5 comment, 6 request key template, 7 history template,
-- 8 live-grant template (templates hold {id}, {actor}, {org}).
local role = redis.call('HGET', k.member, 'role')
-- SECURITY: only an enabled admin of this org revokes everything at once.
if role ~= 'admin' or redis.call('HGET', k.member, 'disabled') == '1' then
  return fail('not_admin', 'only an org admin revokes every grant at once')
end
local ended = {}
for _, id in ipairs(redis.call('SMEMBERS', k.org_live)) do
  local one = {request = string.gsub(ARGV[6], '{id}', id), history = string.gsub(ARGV[7], '{id}', id),
    live_grants = k.live_grants, org_live = k.org_live, outbox = k.outbox, channel = k.channel,
    pending = k.pending}
  local r = hash_of(one.request)
  if r and r.state == 'approved' then
    local lg = string.gsub(ARGV[8], '{actor}', r.requester_key)
    one.live_grant = string.gsub(lg, '{org}', r.org)
    if tonumber(now) >= tonumber(r.expires_at) then
      end_grant(one, r, now, 'expired', 'gateway', '')
    else
      end_grant(one, r, now, 'revoked', ARGV[4], ARGV[5])
      ended[#ended + 1] = id
    end
  else
    redis.call('SREM', k.org_live, id)
  end
end
return done({revoked = ended})
