-- Every single-request script is called with the same KEYS, in this order. `member` is the
-- deciding member's account hash, `requester_account` the requester's.
local k = {
  request = KEYS[1], history = KEYS[2], approvals = KEYS[3], approvers = KEYS[4],
  member = KEYS[5], pending = KEYS[6], live_grants = KEYS[7], live_grant = KEYS[8],
  org_live = KEYS[9], outbox = KEYS[10], org_requests = KEYS[11],
  staff_requests = KEYS[12], requester_account = KEYS[13], channel = ARGV[1],
}
local now = ARGV[2]
