// Serves one Worker config like `wrangler dev`, through wrangler's own dev server API with the
// inspector off. Under `wrangler dev` the inspector proxy attaches to the runtime and makes every
// Durable Object fetch subrequest cost about 1.5 ms more CPU (and hold file descriptors in the
// dev proxy): a comparison of designs that differ in internal calls would measure the debugger.
// No production isolate has one. Usage (gateway.sh):
//   node serve.mjs --config CFG --port P --persist-to DIR [--var NAME:VALUE ...]
// Runs until SIGTERM/SIGINT.
import path from "node:path";

const args = process.argv.slice(2);
const opts = { vars: {} };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const next = () => {
    if (i + 1 >= args.length) throw new Error(`${a} needs a value`);
    return args[++i];
  };
  if (a === "--config") opts.config = next();
  else if (a === "--port") opts.port = Number(next());
  else if (a === "--ip") opts.ip = next();
  else if (a === "--persist-to") opts.persist = next();
  else if (a === "--var") {
    const v = next();
    const at = v.indexOf(":");
    if (at < 1) throw new Error(`--var wants NAME:VALUE, got ${v}`);
    opts.vars[v.slice(0, at)] = v.slice(at + 1);
  } else if (a === "--log-level") opts.logLevel = next();
  else throw new Error(`serve.mjs: unknown argument ${a}`);
}
if (!opts.config || !opts.port) throw new Error("serve.mjs: --config and --port are required");

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const { unstable_startWorker } = await import(path.join(root, "node_modules/wrangler/wrangler-dist/cli.js"));
const bindings = Object.fromEntries(
  Object.entries(opts.vars).map(([k, value]) => [k, { type: "plain_text", value }]),
);
const worker = await unstable_startWorker({
  config: path.resolve(opts.config),
  bindings,
  dev: {
    remote: false,
    server: { hostname: opts.ip ?? "127.0.0.1", port: opts.port },
    inspector: false,
    persist: opts.persist ?? false,
    logLevel: opts.logLevel ?? "warn",
    watch: false,
  },
});
await worker.ready;
console.log(`serve.mjs: ready on http://${opts.ip ?? "127.0.0.1"}:${opts.port}`);
const stop = async () => {
  try {
    await worker.dispose();
  } finally {
    process.exit(0);
  }
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
