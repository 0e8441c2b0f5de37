// Make Node 20's built-in fetch (and so the openai and @anthropic-ai/sdk
// clients) honour HTTPS_PROXY / HTTP_PROXY / NO_PROXY, which it otherwise
// ignores. Load it before the agent:
//
//   NODE_OPTIONS="--import /path/to/butter/tests/node/proxy-preload.mjs" \
//   HTTPS_PROXY=http://127.0.0.1:8080 NODE_EXTRA_CA_CERTS=certs/mitmproxy-ca-cert.pem node agent.js
//
// Node 24+ can do the same natively with NODE_USE_ENV_PROXY=1.
import { EnvHttpProxyAgent, setGlobalDispatcher } from "undici";

setGlobalDispatcher(new EnvHttpProxyAgent());
