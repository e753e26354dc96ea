// Runs replica-set/init.js against a fake of the few mongosh calls it makes, and prints what it wrote
// where, as JSON. Usage: node mongosh_fake.js init.js <primary host> (the member that is primary).
const fs = require("fs");
const vm = require("vm");

const [script, primaryHost] = process.argv.slice(2);
const writes = [];
const hostOf = (address) => address.split(":")[0];

function database(host, name) {
  const collection = (collectionName) => ({
    createIndex: (keys) => writes.push({ host, op: "createIndex", ns: `${name}.${collectionName}`, keys }),
  });
  return {
    getSiblingDB: (other) => database(host, other),
    auth: () => ({ ok: 1 }),
    adminCommand: () => ({
      isWritablePrimary: host === primaryHost,
      primary: `${primaryHost}:27017`,
    }),
    getUser: () => null,
    createUser: (user) => writes.push({ host, op: "createUser", user: user.user, roles: user.roles }),
    updateUser: (user) => writes.push({ host, op: "updateUser", user }),
    outbox: collection("outbox"),
    runner_predictions: collection("runner_predictions"),
  };
}

const context = {
  db: database("mongo1", "test"), // mongosh --host mongo1
  rs: { status: () => ({ ok: 1 }), initiate: () => writes.push({ host: "mongo1", op: "initiate" }) },
  Mongo: function Mongo(address) {
    this.getDB = (name) => database(hostOf(address), name);
  },
  sleep: () => {},
  print: () => {},
  process: { env: { MONGO_ROOT_USER: "root", MONGO_ROOT_PASSWORD: "pw", MONGO_APP_USER: "app", MONGO_APP_PASSWORD: "pw2" } },
};
vm.runInNewContext(fs.readFileSync(script, "utf8"), context);
console.log(JSON.stringify(writes));
