// Browser-side /chat load for benchmarks/ws_bench.py: N visitors over WebSocket, each
// authenticating, then sending ROUNDS messages one every INTERVAL seconds (random
// start), timing each message -> its ack and -> the desk's first message back (the bot's
// answer); no answer within 10 s counts as unanswered. A visitor handed to a human (the
// intent queue was full, or the bot could not answer) expects no more answers. Texts cycle through TEXTS (a JSON list).
// Node's built-in WebSocket (the WHATWG API browsers have; Node 20 needs
// --experimental-websocket) keeps the client side cheap, so the numbers are kefu's and
// not a Python client's. Prints one JSON object on stdout.
//
//   node --experimental-websocket benchmarks/chat_clients.mjs URL CLIENTS ROUNDS INTERVAL HOLD [TEXTS]
const [url, clients, rounds, interval, hold] = [
  process.argv[2], +process.argv[3], +process.argv[4], +process.argv[5], +process.argv[6],
];
const texts = process.argv[7] ? JSON.parse(process.argv[7]) : ["bench"];
const ack = [], answer = [], failures = [];
let unanswered = 0, handedOff = 0;
let ready = 0, held = 0, finished = 0;
const t0 = performance.now();
let connectMs = 0;
let release;
const allReady = new Promise((r) => { release = r; });

function visitor(i) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    let round = 0, sentAt = 0, waitingAnswer = false, acked = false, done = false, human = false;
    const finish = (err) => {
      if (done) return;
      done = true;
      if (err) failures.push(String(err));
      finished++;
      resolve();
    };
    const next = () => {
      if (round >= rounds) {
        setTimeout(() => { held += ws.readyState === 1 ? 1 : 0; ws.close(); finish(); }, hold * 1000);
        return;
      }
      acked = false;
      waitingAnswer = !human; // once handed to a human (no agents here), only the ack comes back
      sentAt = performance.now();
      const mine = round;
      ws.send(JSON.stringify({ type: "message", text: texts[round % texts.length], ref: `r${round}` }));
      setTimeout(() => {
        if (round === mine && waitingAnswer) { unanswered++; waitingAnswer = false; maybeNext(); }
      }, 10000);
    };
    const maybeNext = () => {
      if (acked && !waitingAnswer) { round++; setTimeout(next, interval * 1000); }
    };
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", role: "visitor", site: "demo" }));
    ws.onerror = (e) => finish(e.message || "websocket error");
    ws.onclose = (e) => { if (round < rounds) finish(`closed ${e.code} ${e.reason}`); };
    ws.onmessage = (ev) => {
      const f = JSON.parse(ev.data);
      const now = performance.now();
      if (f.type === "ready") {
        ready++;
        if (ready === clients) { connectMs = now - t0; release(); }
        allReady.then(() => setTimeout(next, Math.random() * interval * 1000));
      } else if (f.type === "ack" && f.ref === `r${round}`) {
        ack.push(now - sentAt); acked = true; maybeNext();
      } else if (f.type === "message" && waitingAnswer && f.message.author.kind !== "customer") {
        answer.push(now - sentAt); waitingAnswer = false; maybeNext();
      } else if (!human && (f.type === "queue" || (f.type === "conversation"
                 && ["queued", "assigned"].includes(f.conversation.status)))) {
        human = true; handedOff++;
      } else if (f.type === "error") {
        finish(`error ${f.code}: ${f.message}`);
      }
    };
  });
}

const all = [];
for (let i = 0; i < clients; i++) {
  all.push(visitor(i));
  if (i % 100 === 99) await new Promise((r) => setTimeout(r, 50)); // a gentle ramp
}
setTimeout(() => release(), 120000); // start anyway if some never got ready
await Promise.all(all);
process.stdout.write(JSON.stringify({ clients, ready, held, connect_s: connectMs / 1000, ack, answer, unanswered, handed_off: handedOff, failures }) + "\n");
