// Run a TF.js graph model on the pure-JS CPU backend: the reference runtime
// for parity tests. Usage:
//   node run.js model.json input.f32 '[1,256,256,3]' out_dir [output names...]
// Writes out_dir/outputs.json ({name: shape}) and out_dir/<i>.f32 per output.
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

async function main() {
  const [modelPath, inputPath, shapeJson, outDir, ...names] = process.argv.slice(2);
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
  const model = await tf.loadGraphModel(handler);
  const raw = fs.readFileSync(inputPath);
  const data = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const input = tf.tensor(data, JSON.parse(shapeJson), 'float32');
  const outputs = names.length ? names : model.outputs.map((o) => o.name);
  let result = model.execute(input, outputs);
  if (!Array.isArray(result)) result = [result];
  const shapes = {};
  result.forEach((t, i) => {
    shapes[outputs[i]] = t.shape;
    fs.writeFileSync(path.join(outDir, `${i}.f32`), Buffer.from(t.dataSync().buffer));
  });
  fs.writeFileSync(path.join(outDir, 'outputs.json'), JSON.stringify({ names: outputs, shapes }));
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
