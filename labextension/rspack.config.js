// Merged into the JupyterLab builder's configuration (package.json "jupyterlab.rspackConfig"): module and
// chunk ids named by their paths relative to this folder, so the built files do not depend on where the
// sources are checked out (rspack's default "deterministic" ids hash absolute paths).
module.exports = {
  optimization: {
    moduleIds: 'named',
    chunkIds: 'named'
  }
};
