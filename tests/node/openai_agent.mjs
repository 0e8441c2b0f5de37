// A small tool-calling agent written the way Node users write one with the
// official `openai` SDK. It is configured only through the environment a user
// would set (OPENAI_API_KEY, OPENAI_BASE_URL, NODE_EXTRA_CA_CERTS, and for the
// proxy preload HTTPS_PROXY + NODE_OPTIONS), so the tests prove those settings.
//
// Input: one JSON argument {model, system, user, tools, orders, stream}.
// Output: one JSON line {answer, calls, cache, finals}: what a person would check,
// the butter-cache header of every LLM response, and each final completion
// with its volatile ids and timestamp removed.
import OpenAI from "openai";

const scenario = JSON.parse(process.argv[2]);
const cache = [];

// Wrapping fetch is the SDK's documented hook; it lets us read butter's
// header for plain and streamed calls alike without changing the SDK path
// (the global dispatcher, and so the proxy preload, still applies).
async function watchedFetch(url, init) {
  const response = await fetch(url, init);
  cache.push(response.headers.get("butter-cache") ?? "");
  return response;
}

const client = new OpenAI({ maxRetries: 0, timeout: 20_000, fetch: watchedFetch });

function withoutIds(completion) {
  const copy = structuredClone(completion);
  delete copy.id;
  delete copy.created; // a replay is answered now, so it carries a fresh timestamp
  for (const choice of copy.choices ?? []) {
    for (const call of choice.message?.tool_calls ?? []) delete call.id;
  }
  return copy;
}

async function ask(messages) {
  const params = { model: scenario.model, messages, tools: scenario.tools };
  if (scenario.stream) {
    // The SDK's own accumulator: it rejects chunks that do not fit together.
    const stream = client.chat.completions.stream({
      ...params,
      ...(scenario.include_usage ? { stream_options: { include_usage: true } } : {}),
    });
    let chunks = 0;
    stream.on("chunk", () => { chunks += 1; });
    const final = await stream.finalChatCompletion();
    if (chunks < 2) throw new Error(`expected a real stream, got ${chunks} chunk(s)`);
    return final;
  }
  return await client.chat.completions.create(params);
}

const messages = [
  { role: "system", content: scenario.system },
  { role: "user", content: scenario.user },
];
const calls = [];
const finals = [];
for (let turn = 0; turn < 5; turn++) {
  const completion = await ask(messages);
  finals.push(withoutIds(completion));
  const message = completion.choices[0].message;
  messages.push({ role: "assistant", content: message.content ?? null,
                  ...(message.tool_calls?.length ? { tool_calls: message.tool_calls } : {}) });
  if (!message.tool_calls?.length) {
    console.log(JSON.stringify({ answer: message.content, calls, cache, finals }));
    process.exit(0);
  }
  for (const call of message.tool_calls) {
    const args = JSON.parse(call.function.arguments);
    calls.push([call.function.name, args]);
    const result = call.function.name === "get_order" ? scenario.orders[args.order_id] : { refunded: true };
    messages.push({ role: "tool", tool_call_id: call.id, content: JSON.stringify(result) });
  }
}
throw new Error("the agent did not finish");
