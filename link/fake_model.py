"""A stand-in OpenAI-compatible model for link/profile.sh: every chat completion, streamed or
not, answers with one short sentence. Listens on 127.0.0.1:$1."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "Noted: this is the profile model answering."


class Model(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        usage = {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}
        if body.get("stream"):
            chunks = [{"choices": [{"delta": {"content": word + " "}}]} for word in ANSWER.split()]
            chunks.append({"choices": [{"delta": {}, "finish_reason": "stop"}]})
            chunks.append({"choices": [], "usage": usage})
            data = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            self.reply("text/event-stream", data.encode())
        else:
            answer = {
                "choices": [{"message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
                "usage": usage,
            }
            self.reply("application/json", json.dumps(answer).encode())

    def reply(self, content_type, data):
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Model).serve_forever()
