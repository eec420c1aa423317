// A client of sdedit.v1.ImageEditor in Node.js (@grpc/grpc-js), for tests/test_grpc_js.py:
// TLS with the test CA, the token as `authorization: Bearer` call credentials. Prints one JSON
// line: what ListModels, Edit and an Edit without a token answered.
//   node edit_client.js ADDRESS CA_PEM TOKEN GUIDE_PNG PROTO_ROOT
// (PROTO_ROOT: the repository's proto/, the only include path: it holds the google/rpc protos
// sdedit.proto imports; protobuf.js bundles the google/protobuf well-known types)
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, caFile, token, guideFile, protoRoot] = process.argv.slice(2);
const definition = protoLoader.loadSync(path.join(protoRoot, "sdedit/v1/sdedit.proto"),
  { includeDirs: [protoRoot], keepCase: true, longs: Number, enums: String, defaults: true });
const sdedit = grpc.loadPackageDefinition(definition).sdedit.v1;
const tls = grpc.credentials.createSsl(fs.readFileSync(caFile));
const bearer = grpc.credentials.createFromMetadataGenerator((_, callback) => {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  callback(null, metadata);
});
const deadline = () => new Date(Date.now() + 30000);
const withToken = new sdedit.ImageEditor(address, grpc.credentials.combineChannelCredentials(tls, bearer));
const withoutToken = new sdedit.ImageEditor(address, tls);
const call = (client, method, request) => new Promise((resolve) => {
  client[method](request, { deadline: deadline() }, (error, reply) => resolve({ error, reply }));
});

(async () => {
  const out = {};
  const models = await call(withToken, "ListModels", {});
  out.models = models.error ? { code: models.error.code } : models.reply.models.map((m) => m.name);
  const request = { image: fs.readFileSync(guideFile), t0: 0.3, steps: 2, seed: 5, num_samples: 1 };
  const edited = await call(withToken, "Edit", request);
  out.edit = edited.error ? { code: edited.error.code, details: edited.error.details }
    : { images: edited.reply.images.length, bytes: edited.reply.images[0].data.length,
        png: edited.reply.images[0].data.subarray(1, 4).toString() === "PNG", network_calls: edited.reply.network_calls };
  const anonymous = await call(withoutToken, "Edit", request);
  out.anonymous = anonymous.error ? { code: anonymous.error.code } : { code: 0 };
  console.log(JSON.stringify(out));
  withToken.close();
  withoutToken.close();
})();
