// The Vercel AI SDK (`ai` + `@ai-sdk/openai`'s default provider, which calls the Responses API)
// against a running `pylon demo`: generateText and streamText, with and without a tool, through
// every provider kind.
// Usage: node ai_sdk_check.mjs BASE_URL
import { generateText, streamText, tool, stepCountIs } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { z } from "zod";

const base = process.argv[2];
const openai = createOpenAI({ baseURL: `${base}/v1`, apiKey: "client-key-unused" });
const models = ["gpt-4o-mini", "claude-sonnet", "gemini-flash", "azure-gpt", "bedrock-claude"];
let passed = 0;
let failed = 0;

async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e?.stack ?? e}`);
  }
}

function assert(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}

const calls = [];
const weather = tool({
  description: "The weather for a place.",
  inputSchema: z.object({ input: z.string() }),
  execute: async ({ input }) => {
    calls.push(input);
    return "sunny";
  },
});

for (const m of models) {
  await check(`ai-sdk: generateText through ${m}`, async () => {
    const r = await generateText({ model: openai(m), prompt: "hello", maxRetries: 0 });
    assert(r.text.endsWith("You said: hello"), JSON.stringify(r.text));
    assert(r.usage.outputTokens > 0, JSON.stringify(r.usage));
    assert(r.finishReason === "stop", r.finishReason);
  });

  await check(`ai-sdk: streamText through ${m}`, async () => {
    const r = streamText({ model: openai(m), prompt: "hello", maxRetries: 0 });
    let text = "";
    for await (const piece of r.textStream) text += piece;
    assert(text.endsWith("You said: hello"), JSON.stringify(text));
    const usage = await r.usage;
    assert(usage.outputTokens > 0, JSON.stringify(usage));
  });

  await check(`ai-sdk: generateText with a tool through ${m}`, async () => {
    const before = calls.length;
    const r = await generateText({
      model: openai(m),
      prompt: "weather in Oslo?",
      tools: { weather },
      stopWhen: stepCountIs(3),
      maxRetries: 0,
    });
    assert(calls.length === before + 1, `tool ran ${calls.length - before} times`);
    assert(r.steps.length === 2, `${r.steps.length} steps`);
    assert(r.text.length > 0, "no final text");
  });

  await check(`ai-sdk: streamText with a tool through ${m}`, async () => {
    const before = calls.length;
    const r = streamText({
      model: openai(m),
      prompt: "weather in Rome?",
      tools: { weather },
      stopWhen: stepCountIs(3),
      maxRetries: 0,
    });
    let text = "";
    for await (const piece of r.textStream) text += piece;
    assert(calls.length === before + 1, `tool ran ${calls.length - before} times`);
    assert(text.length > 0, "no final text");
  });
}

console.log(`ai-sdk: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
