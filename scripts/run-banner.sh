#!/usr/bin/env bash
# Printed by `make run` before the gateway starts: how to connect to it.
config="${1:-examples/symbi.toml}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cat <<EOT

  Symbi gateway: streamable HTTP on http://127.0.0.1:8080/mcp  (config: $config)

  HTTP clients need a credential. Create an API key (shown once) and list the tools:
      KEY=\$(.venv/bin/symbi keys create --principal local --roles developer --config $config | grep -o 'symbi_[A-Za-z0-9_-]*')
      curl -s http://127.0.0.1:8080/mcp -H "Authorization: Bearer \$KEY" -H 'content-type: application/json' \\
        -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2026-07-28' -H 'mcp-method: tools/list' \\
        -d '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"curl","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}'
  Dashboard: http://127.0.0.1:8080/ (log in with a key created with --roles admin)

  Over stdio (what Claude Desktop launches), no key is needed:
      node_modules/.bin/mcp-inspector --cli -e SYMBI_CONFIG_PATH=$root/$config \\
          $root/.venv/bin/symbi mcp --method tools/list

  Claude Desktop (claude_desktop_config.json):
      {"mcpServers": {"symbi": {"command": "$root/.venv/bin/symbi",
                                "args": ["mcp", "--config", "$root/$config"]}}}

EOT
