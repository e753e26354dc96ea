// Idempotent replica-set init, run by the one-shot `mongo-init` service (mongosh, as the root user,
// whose credentials come from the environment: never on a command line).
db.getSiblingDB("admin").auth(process.env.MONGO_ROOT_USER, process.env.MONGO_ROOT_PASSWORD);
// 1. initiate rs0 with the three members if it is not initiated yet;
// 2. wait for a primary;
// 3. create the application user and the indexes the services rely on (both idempotent).
const members = ["mongo1:27017", "mongo2:27017", "mongo3:27017"];

function initiated() {
  try {
    return rs.status().ok === 1;
  } catch (error) {
    if (error.codeName === "NotYetInitialized" || error.code === 94) return false;
    throw error;
  }
}

if (!initiated()) {
  print("initiating replica set rs0");
  rs.initiate({ _id: "rs0", members: members.map((host, i) => ({ _id: i, host, priority: i === 0 ? 2 : 1 })) });
} else {
  print("replica set rs0 already initiated");
}

for (let tries = 0; ; tries++) {
  const hello = db.adminCommand({ hello: 1 });
  if (hello.isWritablePrimary) break;
  if (hello.primary) {
    print(`primary is ${hello.primary}`);
    break;
  }
  if (tries > 120) throw new Error("no primary after 120 s");
  sleep(1000);
}

const appUser = process.env.MONGO_APP_USER;
const appPassword = process.env.MONGO_APP_PASSWORD;
const admin = db.getSiblingDB("admin");
const roles = [
  { role: "readWrite", db: "main_db" },
  { role: "readWrite", db: "runner_db" },
];
if (admin.getUser(appUser) === null) {
  admin.createUser({ user: appUser, pwd: appPassword, roles });
  print(`user ${appUser} created`);
} else {
  admin.updateUser(appUser, { pwd: appPassword, roles });
  print(`user ${appUser} updated`);
}

// Sweeps and the stall checks look jobs up by status and age; status/all pages by (created_at, _id),
// optionally of one status; the webhook relay's sweep finds pending deliveries.
db.getSiblingDB("main_db").outbox.createIndex({ status: 1, relayed_at: 1 });
db.getSiblingDB("main_db").outbox.createIndex({ created_at: 1, _id: 1 });
db.getSiblingDB("main_db").outbox.createIndex({ status: 1, created_at: 1, _id: 1 });
db.getSiblingDB("main_db").outbox.createIndex({ webhook: 1 }, { sparse: true });
db.getSiblingDB("runner_db").runner_predictions.createIndex({ status: 1, updated_at: 1 });
print("replica set ready");
