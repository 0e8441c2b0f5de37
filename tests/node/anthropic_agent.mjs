// A small tool-calling agent written the way Node users write one with the
// official `@anthropic-ai/sdk`. Configured only through the environment a user
// would set (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL, NODE_EXTRA_CA_CERTS, and
// for the proxy preload HTTPS_PROXY + NODE_OPTIONS).
//
// Input: one JSON argument {model, system, user, tools, orders, stream}.
// Output: one JSON line {answer, calls, cache, finals}: what a person would check,
// the butter-cache header of every LLM response, and each final message with
// its volatile ids (and SDK-helper-only fields) removed.
import Anthropic from "@anthropic-ai/sdk";

const scenario = JSON.parse(process.argv[2]);
const cache = [];

async function watchedFetch(url, init) {
  const response = await fetch(url, init);
  cache.push(response.headers.get("butter-cache") ?? "");
  return response;
}

const client = new Anthropic({ maxRetries: 0, timeout: 20_000, fetch: watchedFetch });

function withoutIds(message) {
  const copy = structuredClone(message);
  delete copy.id;
  // The SDK's stream helper adds `parsed_output` (its structured-output
  // convenience); a plain create() does not. It is not on the wire.
  delete copy.parsed_output;
  for (const block of copy.content ?? []) {
    if (block.type === "tool_use") delete block.id;
    delete block.parsed_output;
  }
  return copy;
}

async function ask(messages) {
  const params = { model: scenario.model, max_tokens: 1024, system: scenario.system, tools: scenario.tools, messages };
  if (scenario.stream) {
    // The SDK's own accumulator: it rejects events that do not fit together.
    const stream = client.messages.stream(params);
    let events = 0;
    stream.on("streamEvent", () => { events += 1; });
    const final = await stream.finalMessage();
    if (events < 3) throw new Error(`expected a real stream, got ${events} event(s)`);
    return final;
  }
  return await client.messages.create(params);
}

const messages = [{ role: "user", content: scenario.user }];
const calls = [];
const finals = [];
for (let turn = 0; turn < 5; turn++) {
  const reply = await ask(messages);
  finals.push(withoutIds(reply));
  messages.push({ role: "assistant", content: reply.content });
  const uses = reply.content.filter((block) => block.type === "tool_use");
  if (!uses.length) {
    const answer = reply.content.filter((b) => b.type === "text").map((b) => b.text).join("");
    console.log(JSON.stringify({ answer, calls, cache, finals }));
    process.exit(0);
  }
  const results = uses.map((use) => {
    calls.push([use.name, use.input]);
    const result = use.name === "get_order" ? scenario.orders[use.input.order_id] : { refunded: true };
    return { type: "tool_result", tool_use_id: use.id, content: JSON.stringify(result) };
  });
  messages.push({ role: "user", content: results });
}
throw new Error("the agent did not finish");
