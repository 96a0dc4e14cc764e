// A small MCP server (Node, stdio) for sandbox network tests: connect(host, port) tries a TCP
// connection and answers "connected", "refused", "unreachable" or "timeout"; listen() opens a
// TCP listener on 127.0.0.1 (a random port, kept open) and answers its port.
// $PROBE_SDK is the folder of @modelcontextprotocol/sdk (a sandbox sees only what is bound).
import net from "node:net";

const sdk = `${process.env.PROBE_SDK}/dist/esm`;
const { Server } = await import(`${sdk}/server/index.js`);
const { StdioServerTransport } = await import(`${sdk}/server/stdio.js`);
const { CallToolRequestSchema, ListToolsRequestSchema } = await import(`${sdk}/types.js`);

const server = new Server({ name: "net-probe", version: "1.0.0" }, { capabilities: { tools: {} } });

server.setRequestHandler(ListToolsRequestSchema, async () => ({
  tools: [{
    name: "connect",
    description: "Try a TCP connection to host:port.",
    inputSchema: { type: "object", properties: { host: { type: "string" }, port: { type: "integer" } }, required: ["host", "port"] },
  }, {
    name: "listen",
    description: "Listen on 127.0.0.1 (a random port) and answer the port.",
    inputSchema: { type: "object", properties: {} },
  }],
}));

function probe(host, port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (what) => { sock.destroy(); resolve(what); };
    sock.setTimeout(3000, () => done("timeout"));
    sock.on("connect", () => done("connected"));
    sock.on("error", (e) => done(e.code === "ECONNREFUSED" ? "refused" : `unreachable:${e.code}`));
  });
}

const listeners = [];
function listen() {
  return new Promise((resolve) => {
    // a probe that connects then destroys resets this end: without a handler that error
    // ended the whole server (and its namespace with it)
    const srv = net.createServer((sock) => { sock.on("error", () => {}); sock.end("hello"); });
    listeners.push(srv);
    srv.listen(0, "127.0.0.1", () => resolve(String(srv.address().port)));
  });
}

server.setRequestHandler(CallToolRequestSchema, async (req) => {
  if (req.params.name === "listen") return { content: [{ type: "text", text: await listen() }] };
  const { host, port } = req.params.arguments;
  return { content: [{ type: "text", text: await probe(host, Number(port)) }] };
});

await server.connect(new StdioServerTransport());
