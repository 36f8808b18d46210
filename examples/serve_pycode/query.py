"""Query the server started by serve.sh with the `openai` client, then print DSpark's metrics.

    python examples/serve_pycode/query.py [--url http://127.0.0.1:8000/v1]
"""
import argparse
import urllib.request

from openai import OpenAI

parser = argparse.ArgumentParser()
parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
args = parser.parse_args()

client = OpenAI(base_url=args.url, api_key="unused")
model = client.models.list().data[0].id

completion = client.completions.create(
    model=model, prompt="def fibonacci(n):\n", max_tokens=64, temperature=0.0)
print(completion.choices[0].text)

chat = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Write a function that reverses a list."}],
    max_tokens=64, temperature=1.0)
print(chat.choices[0].message.content)

metrics = urllib.request.urlopen(args.url.removesuffix("/v1") + "/metrics").read().decode()
for line in metrics.splitlines():
    if line.startswith(("dspark:", "vllm:spec_decode_num_accepted_tokens_total")) and "_created" not in line:
        print(line)
