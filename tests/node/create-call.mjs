// Places a call with Twilio's Node.js library against a Twilio stand-in, as a Node.js
// program would: `node create-call.mjs API_URL ACCOUNT_SID AUTH_TOKEN TO FROM TWIML_URL`
// creates the call, waits until it has ended, fetches and lists it and prints JSON.
// The library has no option for another API host (its edge and region options only
// splice an edge and a region into the host name): the API domain's baseUrl is set, as
// with the Python library.
import twilio from "twilio";

const [apiUrl, accountSid, authToken, to, from, twimlUrl] = process.argv.slice(2);
const client = twilio(accountSid, authToken, { env: {} });
client.api.baseUrl = apiUrl;

const created = await client.calls.create({ to, from, url: twimlUrl, method: "GET" });
const ended = ["completed", "busy", "no-answer", "failed", "canceled"];
let fetched = await client.calls(created.sid).fetch();
for (let i = 0; i < 200 && !ended.includes(fetched.status); i++) {
  await new Promise((resolve) => setTimeout(resolve, 100));
  fetched = await client.calls(created.sid).fetch();
}
const listed = await client.calls.list({ to, limit: 20 });
let error = null;
try {
  await client.calls("CA" + "0".repeat(32)).fetch();
} catch (e) {
  error = { status: e.status, code: e.code, message: e.message };
}
console.log(
  JSON.stringify({
    created: { sid: created.sid, status: created.status, to: created.to, from: created.from },
    fetched: { status: fetched.status, duration: fetched.duration },
    listed: listed.map((c) => c.sid),
    missing: error,
  }),
);
