// Gradient of a TF.js graph model's output w.r.t. its input, in the original
// runtime (pure-JS CPU backend): d/dx sum(output(x) * cotangent). Usage:
//   node grad_embedding.js model.json input.f32 '[B,H,W,3]' cotangent.f32 out_dir output_name
// Writes out_dir/output.f32 (the forward output) and out_dir/grad.f32 ([B,H,W,3]).
const fs = require('fs');
const path = require('path');
const { loadModel, readF32, tf } = require('./load_model');

async function main() {
  const [modelPath, inputPath, shapeJson, cotPath, outDir, outputName] = process.argv.slice(2);
  const model = await loadModel(modelPath);
  const input = tf.tensor(readF32(inputPath), JSON.parse(shapeJson), 'float32');
  const out = model.execute(input, outputName);
  const cot = tf.tensor(readF32(cotPath), out.shape, 'float32');
  const grad = tf.grad((x) => tf.sum(tf.mul(model.execute(x, outputName), cot)))(input);
  fs.writeFileSync(path.join(outDir, 'output.f32'), Buffer.from(out.dataSync().buffer));
  fs.writeFileSync(path.join(outDir, 'grad.f32'), Buffer.from(grad.dataSync().buffer));
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
