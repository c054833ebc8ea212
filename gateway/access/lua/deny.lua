-- One approver denies; one denial ends the request. ARGV: 3 approver id, 4 key, 5 org, 6 comment.
local r, refused = decidable_request(k, now, ARGV[3], ARGV[4], ARGV[5],
  'nobody decides their own request')
if not r then return refused end
end_request(k, r, now, 'denied', ARGV[4], ARGV[6])
return done({state = 'denied'})
