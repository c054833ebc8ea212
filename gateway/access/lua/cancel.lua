-- The requester withdraws a pending request. ARGV: 3 requester key, 4 comment.
-- SECURITY: only the requester sees (and so cancels) their request.
local r, refused = pending_request(k, now, 'requester_key', ARGV[3], 'cancelled')
if not r then return refused end
end_request(k, r, now, 'cancelled', ARGV[3], ARGV[4])
return done({state = 'cancelled'})
