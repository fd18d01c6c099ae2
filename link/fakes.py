"""Stand-ins for what `ecdysis serve` talks to while link/profile.sh records it, on
127.0.0.1:$1: a model (OpenAI chat completions at /v1/chat/completions, Anthropic messages at
/v1/messages; streamed or whole, always one short sentence) and Slack's Web API (/api/<method>:
every method succeeds)."""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "Noted: this is the profile model answering."
WORDS = [word + " " for word in ANSWER.split()]


def sse(events):
    return "".join(
        (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n" for name, data in events
    )


def openai(body):
    usage = {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}
    if not body.get("stream"):
        message = {"role": "assistant", "content": ANSWER}
        return "application/json", json.dumps(
            {"choices": [{"message": message, "finish_reason": "stop"}], "usage": usage}
        )
    chunks = [{"choices": [{"delta": {"content": word}}]} for word in WORDS]
    chunks += [{"choices": [{"delta": {}, "finish_reason": "stop"}]}, {"choices": [], "usage": usage}]
    return "text/event-stream", sse((None, c) for c in chunks) + "data: [DONE]\n\n"


def anthropic(body):
    usage = {"input_tokens": 10, "output_tokens": 8}
    message = {"id": "msg_profile", "type": "message", "role": "assistant", "model": body.get("model")}
    if not body.get("stream"):
        whole = dict(message, content=[{"type": "text", "text": ANSWER}], stop_reason="end_turn", usage=usage)
        return "application/json", json.dumps(whole)
    events = [("message_start", {"type": "message_start", "message": dict(message, content=[], usage=usage)})]
    events.append(("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}}))
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": word}}) for word in WORDS]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                     "usage": {"output_tokens": 8}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return "text/event-stream", sse(events)


def slack():
    ts = f"{time.time():.6f}"
    answer = {"ok": True, "ts": ts, "channel": "C1", "user_id": "UBOT", "team_id": "T1",
              "team": "Profile", "user": "profile-bot", "bot_id": "BBOT", "messages": []}
    return "application/json", json.dumps(answer)


class Fakes(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.do_POST()

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}  # Slack's form-encoded calls
        path = self.path.split("?", 1)[0]
        if path.endswith("/chat/completions"):
            content_type, data = openai(body)
        elif path.endswith("/v1/messages"):
            content_type, data = anthropic(body)
        else:
            content_type, data = slack()
        data = data.encode()
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Fakes).serve_forever()
