"""Sends signed Slack Events API requests (app mentions in channels, and direct messages) to
`ecdysis serve` for link/profile.sh.

Usage: slack_events.py URL SIGNING_SECRET COUNT"""
import hashlib
import hmac
import json
import sys
import time
import urllib.request


def send(url, secret, n, event):
    body = json.dumps({
        "token": "t", "team_id": "T1", "api_app_id": "APROFILE", "type": "event_callback",
        "event_id": f"EvProfile{n}", "event_time": int(time.time()),
        "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
        "event": event,
    })
    now = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"v0:{now}:{body}".encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(url, data=body.encode(), headers={
        "content-type": "application/json",
        "x-slack-request-timestamp": now,
        "x-slack-signature": f"v0={digest}",
    })
    urllib.request.urlopen(request).read()


def main(url, secret, count):
    for n in range(count):
        ts = f"{time.time():.6f}"
        if n % 3 == 2:
            event = {"type": "message", "channel_type": "im", "user": f"U{n % 5}", "channel": "D1",
                     "ts": ts, "event_ts": ts, "text": f"a direct question {n}"}
        else:
            event = {"type": "app_mention", "user": f"U{n % 5}", "channel": f"C{n % 2}", "ts": ts,
                     "event_ts": ts, "text": f"<@UBOT> question number {n}"}
        send(url, secret, n, event)
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
