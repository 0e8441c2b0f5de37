// Make Node's built-in fetch (and so the openai, @anthropic-ai/sdk and
// @google/genai clients) honour HTTPS_PROXY / HTTP_PROXY / NO_PROXY, which
// Node 20 ignores. `butter run` loads it for you; by hand:
//
//   NODE_OPTIONS="--import /path/to/butter/cli/node/proxy-preload.mjs" \
//   HTTPS_PROXY=http://127.0.0.1:8080 NODE_EXTRA_CA_CERTS=~/.mitmproxy/mitmproxy-ca-cert.pem node agent.js
//
// Where undici comes from: the agent's own project first (node_modules under
// the working directory, as `npm install undici` puts it), then next to this
// file. Node 24+ (and 22.21+) do the same natively with NODE_USE_ENV_PROXY=1,
// which `butter run` also sets, so there a missing undici is not an error.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

function findUndici() {
  const places = [pathToFileURL(process.cwd() + "/").href, import.meta.url];
  for (const place of places) {
    try {
      return createRequire(place).resolve("undici");
    } catch {
      // not installed there; try the next place
    }
  }
  return null;
}

const [major, minor] = process.versions.node.split(".").map(Number);
const nativeEnvProxy = major >= 24 || (major === 22 && minor >= 21);
const found = findUndici();
if (found) {
  const undici = await import(pathToFileURL(found).href);
  if (typeof undici.EnvHttpProxyAgent === "function") {
    undici.setGlobalDispatcher(new undici.EnvHttpProxyAgent());
  } else if (!nativeEnvProxy) {
    process.stderr.write(`butter: undici at ${found} has no EnvHttpProxyAgent (needs undici 6.14+); ` +
      "fetch will not use HTTPS_PROXY\n");
  }
} else if (!nativeEnvProxy) {
  process.stderr.write("butter: Node " + process.versions.node + "'s fetch ignores HTTPS_PROXY and undici was not " +
    "found; run `npm install undici` in your project (or use Node 24+), or point the SDK's base URL at " +
    "a reverse listener (butter proxy --reverse openai)\n");
}
