// Idempotent replica-set init, run by the one-shot `mongo-init` service (mongosh, as the root user,
// whose credentials come from the environment: never on a command line).
// 1. initiate rs0 with the three members if it is not initiated yet;
// 2. wait for a writable primary and connect to it (after a full restart mongo1 may be a secondary);
// 3. create or update the application user (idempotent). The services create their indexes.
const rootUser = process.env.MONGO_ROOT_USER;
const rootPassword = process.env.MONGO_ROOT_PASSWORD;
const members = ["mongo1:27017", "mongo2:27017", "mongo3:27017"];

function authenticate(database) {
  try {
    database.getSiblingDB("admin").auth(rootUser, rootPassword);
  } catch (error) {
    // The image creates the root user from MONGO_INITDB_ROOT_* on the first start only; a password
    // changed in .env later is not applied (README, "Rotating the MongoDB passwords").
    print(
      "mongo-init: the root user cannot sign in. If MONGO_ROOT_PASSWORD was changed in .env after the " +
        "first start, change it in MongoDB first (db.changeUserPassword), as the README says.",
    );
    throw error;
  }
}

authenticate(db);

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

// A member that is not primary cannot take writes: wait until some member says it is the writable
// primary, and write through a connection to that member (not through mongo1, which may be secondary).
function writablePrimary() {
  for (let tries = 0; tries <= 120; tries++) {
    const hello = db.adminCommand({ hello: 1 });
    if (hello.isWritablePrimary) return db;
    if (hello.primary) {
      const primary = new Mongo(hello.primary).getDB("admin");
      authenticate(primary);
      if (primary.adminCommand({ hello: 1 }).isWritablePrimary) {
        print(`primary is ${hello.primary}`);
        return primary;
      }
    }
    sleep(1000);
  }
  throw new Error("no writable primary after 120 s");
}

const primary = writablePrimary();
const appUser = process.env.MONGO_APP_USER;
const appPassword = process.env.MONGO_APP_PASSWORD;
const admin = primary.getSiblingDB("admin");
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

// The indexes are created by the services themselves when they start (events/indexes.py).
print("replica set ready");
