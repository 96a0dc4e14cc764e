#!/usr/bin/env bash
# Printed by `make run` before the gateway starts: how to connect to it.
config="${1:-examples/symbi.toml}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cat <<EOT

  Symbi gateway: streamable HTTP on http://127.0.0.1:8080/mcp  (config: $config)

  HTTP clients need a credential. Create an API key (shown once):
      .venv/bin/symbi keys create --principal local --roles developer --config $config
  then, with the MCP Inspector CLI:
      node_modules/.bin/mcp-inspector --cli http://127.0.0.1:8080/mcp --transport http \\
          --header "Authorization: Bearer <KEY>" --method tools/list

  Over stdio (what Claude Desktop launches), no key is needed:
      node_modules/.bin/mcp-inspector --cli -e SYMBI_CONFIG_PATH=$root/$config \\
          $root/.venv/bin/symbi mcp --method tools/list

  Claude Desktop (claude_desktop_config.json):
      {"mcpServers": {"symbi": {"command": "$root/.venv/bin/symbi",
                                "args": ["mcp", "--config", "$root/$config"]}}}

EOT
