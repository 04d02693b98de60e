-- wrk script: one canonical seal event a request, unique seq, for the fixture trip's first device.
counter = 0
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
-- The caller's credential (bench/http-load.sh makes an admin token): ECTS_TOKEN.
wrk.headers["authorization"] = "Bearer " .. (os.getenv("ECTS_TOKEN") or "")
request = function()
  counter = counter + 1
  local seq = counter * 1000 + math.random(0, 999)
  local body = string.format('{"device_id":"860000000000001","seq":%d,"time":"2026-03-14T10:%02d:%02dZ","kind":"position","position":{"lat":13.9,"lon":-90.5,"fix":"gps"},"battery_pct":80}', seq, math.floor(counter / 60) % 60, counter % 60)
  return wrk.format(nil, "/v1/seal-events", nil, body)
end
