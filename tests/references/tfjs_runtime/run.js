// Run a TF.js graph model on the pure-JS CPU backend: the reference runtime
// for parity tests. Usage:
//   node run.js model.json input.f32 '[1,256,256,3]' out_dir [output names...]
// Writes out_dir/outputs.json ({names, shapes}) and out_dir/<i>.f32 per output.
const fs = require('fs');
const path = require('path');
const { loadModel, readF32, tf } = require('./load_model');

async function main() {
  const [modelPath, inputPath, shapeJson, outDir, ...names] = process.argv.slice(2);
  const model = await loadModel(modelPath);
  const input = tf.tensor(readF32(inputPath), JSON.parse(shapeJson), 'float32');
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
