// Gradient of a TF.js graph model's output w.r.t. its input, in the original
// runtime (pure-JS CPU backend): d/dx sum(output(x) * cotangent). Usage:
//   node grad_embedding.js model.json input.f32 '[B,H,W,3]' cotangent.f32 out_dir output_name
// Writes out_dir/output.f32 (the forward output) and out_dir/grad.f32 ([B,H,W,3]).
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

function readF32(p) {
  const raw = fs.readFileSync(p);
  return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
}

async function main() {
  const [modelPath, inputPath, shapeJson, cotPath, outDir, outputName] = process.argv.slice(2);
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
  const input = tf.tensor(readF32(inputPath), JSON.parse(shapeJson), 'float32');
  const out = model.execute(input, outputName);
  const cot = tf.tensor(readF32(cotPath), out.shape, 'float32');
  const grad = tf.grad((x) => tf.sum(tf.mul(model.execute(x, outputName), cot)))(input);
  fs.writeFileSync(path.join(outDir, 'output.f32'), Buffer.from(out.dataSync().buffer));
  fs.writeFileSync(path.join(outDir, 'grad.f32'), Buffer.from(grad.dataSync().buffer));
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
