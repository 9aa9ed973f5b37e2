// Shared by run.js and grad_embedding.js: load a TF.js graph model from its
// model.json and the .bin shards beside it (pure-JS CPU backend), and read
// raw little-endian float32 files.
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

async function loadModel(modelPath) {
  await tf.setBackend('cpu');
  const spec = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
  const weightSpecs = [];
  const buffers = [];
  for (const group of spec.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(path.dirname(modelPath), p)));
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const handler = { load: async () => ({ modelTopology: spec.modelTopology, weightSpecs, weightData,
    format: spec.format, generatedBy: spec.generatedBy, convertedBy: spec.convertedBy,
    signature: spec.signature, userDefinedMetadata: spec.userDefinedMetadata }) };
  return tf.loadGraphModel(handler);
}

function readF32(p) {
  const raw = fs.readFileSync(p);
  return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
}

module.exports = { loadModel, readF32, tf };
