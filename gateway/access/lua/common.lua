-- Shared by every access-workflow script (prepended when the scripts are loaded).
-- Time is always ARGV "now" from the gateway's Clock: never Redis TIME, never TTLs.
-- Replies are JSON: {ok=true, ...} or {ok=false, error=CODE, reason=TEXT}.

local function hash_of(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function fail(code, reason)
  return cjson.encode({ok = false, error = code, reason = reason})
end

local function done(t)
  t.ok = true
  return cjson.encode(t)
end

local function remember(history_key, now, action, actor, comment, duration_s, scope)
  local entry = {at = tonumber(now), action = action, actor = actor}
  if comment and comment ~= '' then entry.comment = comment end
  if duration_s and duration_s ~= '' then entry.duration_s = tonumber(duration_s) end
  if scope and scope ~= '' then entry.scope = scope end
  redis.call('RPUSH', history_key, cjson.encode(entry))
end

-- One event: appended to the outbox stream (notices, audit) and published (cache drops).
-- `extra` (optional) is a flat list of further field/value pairs for the outbox entry.
local function emit(outbox, channel, event, r, now, actor, comment, extra)
  local entry = {outbox, '*',
    'event', event, 'id', r.id, 'org', r.org, 'member', r.member,
    'requester', r.requester_key, 'actor', actor, 'at', now, 'comment', comment or ''}
  for _, value in ipairs(extra or {}) do entry[#entry + 1] = value end
  redis.call('XADD', unpack(entry))
  redis.call('PUBLISH', channel, cjson.encode({
    event = event, id = r.id, org = r.org, actor_key = r.requester_key, at = tonumber(now)}))
end

-- Is approver_id, a member of the request's org, an approver right now?
local function may_decide(approvers_key, member_key, approver_id)
  local role = redis.call('HGET', member_key, 'role')
  if not role then return false end
  if redis.call('HGET', member_key, 'disabled') == '1' then return false end
  if redis.call('SCARD', approvers_key) > 0 then
    return redis.call('SISMEMBER', approvers_key, approver_id) == 1
  end
  return role == 'admin'
end

-- Who an account is as a person: the `person` id the directory gives every account of one
-- person, else the account itself (an account naming no person is its own person). The
-- prefixes keep the two apart: a person id has no ':' (it is checked like an account id).
local function person_of(account_key, principal_key)
  local person = redis.call('HGET', account_key, 'person')
  if person and person ~= '' then return 'person:' .. person end
  return 'account:' .. principal_key
end

-- Is there a grant, other than except_id, live at `now` for the live-grant pointer key?
local function live_elsewhere(live_grant_key, now, except_id)
  local id = redis.call('HGET', live_grant_key, 'id')
  if not id or id == except_id then return false end
  if redis.call('HGET', live_grant_key, 'state') ~= 'approved' then return false end
  local ends = tonumber(redis.call('HGET', live_grant_key, 'expires_at') or '0')
  return ends > tonumber(now)
end

-- End a pending request (denied, cancelled, lapsed): state, pending index, history, event.
local function end_request(k, r, now, state, actor, comment)
  redis.call('HSET', k.request, 'state', state, 'ended_at', now, 'ended_by', actor)
  redis.call('ZREM', k.pending, r.id)
  remember(k.history, now, state, actor, comment)
  emit(k.outbox, k.channel, state, r, now, actor, comment)
end

local function lapse(k, r, now)
  end_request(k, r, now, 'lapsed', 'gateway', '')
end

-- The request, if r[owner_field] is `owner` and it is still pending at `now`; else nil and the
-- failure reply. A request whose time is up is lapsed on the way ("lapsed before it was <verb>").
local function pending_request(k, now, owner_field, owner, verb)
  local r = hash_of(k.request)
  if not r or r[owner_field] ~= owner then return nil, fail('not_found', 'no such request') end
  if r.state ~= 'pending' then return nil, fail('wrong_state', 'the request is ' .. r.state) end
  if tonumber(now) >= tonumber(r.lapses_at) then
    lapse(k, r, now)
    return nil, fail('wrong_state', 'the request lapsed before it was ' .. verb)
  end
  return r
end

-- The pending request of approver_org that approver_id (key approver_key) may decide now;
-- else nil and the failure reply (`own_reason` when it is the approver's own request).
local function decidable_request(k, now, approver_id, approver_key, approver_org, own_reason)
  local r, refused = pending_request(k, now, 'org', approver_org, 'decided')
  if not r then return nil, refused end
  -- SECURITY: nobody decides their own request; only approvers in force now decide.
  if r.requester_key == approver_key then return nil, fail('self_approval', own_reason) end
  -- SECURITY: nor through another account of theirs: the person links as stored now (a
  -- link made or removed since the filing counts), never anything the client sent.
  if person_of(k.member, approver_key) == person_of(k.requester_account, r.requester_key) then
    return nil, fail('self_approval', own_reason .. ', not through another account either')
  end
  if not may_decide(k.approvers, k.member, approver_id) then
    return nil, fail('not_approver', 'only the org\'s approvers decide requests')
  end
  return r
end

-- End a grant (expired or revoked): state, indexes, and the live pointer if it is ours.
local function end_grant(k, r, now, state, actor, comment)
  redis.call('HSET', k.request, 'state', state, 'ended_at', now, 'ended_by', actor)
  redis.call('ZREM', k.live_grants, r.id)
  redis.call('SREM', k.org_live, r.id)
  -- The pointer keeps the ended state so a check can say "revoked" rather than "no grant".
  if redis.call('HGET', k.live_grant, 'id') == r.id then
    redis.call('HSET', k.live_grant, 'state', state, 'ended_at', now)
  end
  remember(k.history, now, state, actor, comment)
  emit(k.outbox, k.channel, state, r, now, actor, comment)
end

-- Start a grant at `now` for the duration and scope in force.
local function start_grant(k, r, now, actor)
  local expires = string.format('%.3f', tonumber(now) + tonumber(r.duration_s))
  redis.call('HSET', k.request, 'state', 'approved', 'starts_at', now, 'expires_at', expires)
  redis.call('ZREM', k.pending, r.id)
  redis.call('ZADD', k.live_grants, expires, r.id)
  redis.call('SADD', k.org_live, r.id)
  redis.call('DEL', k.live_grant)
  redis.call('HSET', k.live_grant, 'id', r.id, 'org', r.org, 'member', r.member,
    'state', 'approved', 'scope', r.scope, 'starts_at', now, 'expires_at', expires, 'kind', r.kind,
    'actor_kind', r.requester_kind, 'actor_id', r.requester_id,
    'actor_email', r.requester_email or '', 'actor_name', r.requester_name or '',
    'actor_org', r.requester_org or '', 'actor_role', r.requester_role or '')
  remember(k.history, now, 'approved', actor, '', r.duration_s, r.scope)
  emit(k.outbox, k.channel, 'approved', r, now, actor, '')
  return expires
end
