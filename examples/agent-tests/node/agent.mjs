// The same support agent in Node, with the official `openai` SDK:
//   node agent.mjs "Please refund order 9876."
// Prints {"answer": ..., "refunds": [...]} as one JSON line. Like the Python
// agent it only reads the environment (OPENAI_API_KEY, and the proxy settings
// the butter pytest plugin gives its subprocesses).
import OpenAI from "openai";

const MODEL = "gpt-4o-mini";
const SYSTEM = "You are a support agent for a web shop. Use the tools, then answer in one sentence.";
const TOOLS = [
  { type: "function", function: { name: "get_order", description: "Look up an order by its id",
    parameters: { type: "object", properties: { order_id: { type: "string" } }, required: ["order_id"] } } },
  { type: "function", function: { name: "refund", description: "Refund an order in full",
    parameters: { type: "object", properties: { order_id: { type: "string" }, amount: { type: "number" } },
                  required: ["order_id", "amount"] } } },
];
const ORDERS = {
  "9876": { order_id: "9876", customer: "Bo Chen", amount: 17.0, status: "paid" },
};

const client = new OpenAI({ maxRetries: 0, timeout: 30_000 });
const refunds = [];

function callTool(name, args) {
  if (name === "get_order") return ORDERS[args.order_id] ?? { error: "no such order" };
  if (name === "refund") {
    refunds.push([args.order_id, args.amount]);
    return { refunded: true, order_id: args.order_id };
  }
  return { error: `unknown tool ${name}` };
}

const messages = [{ role: "system", content: SYSTEM }, { role: "user", content: process.argv[2] }];
for (let turn = 0; turn < 6; turn++) {
  const completion = await client.chat.completions.create({ model: MODEL, messages, tools: TOOLS });
  const message = completion.choices[0].message;
  if (!message.tool_calls?.length) {
    console.log(JSON.stringify({ answer: message.content, refunds }));
    process.exit(0);
  }
  messages.push({ role: "assistant", content: message.content ?? null, tool_calls: message.tool_calls });
  for (const call of message.tool_calls) {
    const result = callTool(call.function.name, JSON.parse(call.function.arguments));
    messages.push({ role: "tool", tool_call_id: call.id, content: JSON.stringify(result) });
  }
}
throw new Error("no answer after 6 turns");
