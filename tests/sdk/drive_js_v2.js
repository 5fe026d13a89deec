#!/usr/bin/env node
// Drives the REAL authing-js-sdk 4.23.55 (v2 JS client) from tests/sdk/node_modules.
//
//     node drive_js_v2.js BASE_URL < scenario.json
//
// Scenario: a JSON list of calls, run in order:
//     {"row": "login.email.right", "call": "loginByEmail",
//      "args": ["alice@example.com", "right-password"], "client": {...}}
// `call` is a method of AuthenticationClient (a dotted path reaches an
// attribute). Calls with the same `client` options share one client. Env
// SDK_PUBKEY: the RSA public key the SDK encrypts passwords with (publicKey).
//
// Prints one JSON line per call: {"row", "sdk": "js-v2", "ok", "code",
// "message", "raw"}. The client throws `{code, message, data}` on a GraphQL
// error or a REST answer whose code is not 200; `code` is that code (an
// Error whose message is such JSON is read the same way; for a v3 body
// thrown whole, apiCode, else statusCode). On success `code` is 200. A failed call never stops the run.
'use strict';
const { AuthenticationClient } = require('authing-js-sdk');

const SDK = 'js-v2';

function emit(row, ok, code, message, raw) {
  process.stdout.write(JSON.stringify({ row, sdk: SDK, ok, code, message, raw: raw === undefined ? null : raw }) + '\n');
}

async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

async function main() {
  const base = process.argv[2].replace(/\/$/, '');
  const calls = JSON.parse(await readStdin());
  const clients = new Map();
  for (const c of calls) {
    const row = c.row;
    try {
      const opts = Object.assign(
        { appId: 'sdk-app', userPoolId: 'sdk-pool', appHost: base, websocketHost: base, publicKey: process.env.SDK_PUBKEY },
        c.client || {}
      );
      const key = JSON.stringify(Object.keys(opts).sort().map(k => [k, opts[k]]));
      if (!clients.has(key)) clients.set(key, new AuthenticationClient(Object.assign({}, opts)));
      let owner = null;
      let target = clients.get(key);
      for (const part of c.call.split('.')) {
        owner = target;
        target = target[part];
      }
      if (typeof target !== 'function') throw new Error(`no SDK method ${c.call}`);
      const out = await target.apply(owner, c.args || []);
      emit(row, true, 200, null, out);
    } catch (e) {
      let err = e;
      if (e instanceof Error) {
        try {
          err = JSON.parse(e.message);
        } catch (_) {
          err = { code: e.code === undefined ? null : e.code, message: `${e.name}: ${e.message}` };
        }
      }
      if (err && typeof err === 'object') {
        // {code, message, data}; signinByCredentials throws the whole v3
        // body ({statusCode, apiCode, message, data}) instead.
        const code = [err.code, err.apiCode, err.statusCode].find(c => c !== undefined && c !== null);
        emit(row, false, code === undefined ? null : code, err.message === undefined ? null : err.message, err.data === undefined ? null : err.data);
      } else {
        emit(row, false, null, String(err), null);
      }
    }
  }
}

main()
  // Exit once stdout is flushed, whatever the SDK left running (timers,
  // sockets): the suite waits for stdout to close.
  .then(() => process.stdout.write('', () => process.exit(0)))
  .catch(e => {
    process.stderr.write(`drive_js_v2: ${e && e.stack ? e.stack : e}\n`);
    process.exit(2);
  });
