"use strict";(self.rspackChunkmlaas4hep_lab=self.rspackChunkmlaas4hep_lab||[]).push([["style_index_js"],{"./node_modules/css-loader/dist/cjs.js!./style/base.css"(e,t,r){var o=r("./node_modules/css-loader/dist/runtime/noSourceMaps.js"),a=r.n(o),n=r("./node_modules/css-loader/dist/runtime/api.js"),s=(r.n(n))()(a());s.push([e.id,`/* mlaas4hep-lab: the Inspect view, the runs comparison and the sidebar. Colours from the JupyterLab theme. */

.m4h-inspect,
.m4h-compare-view,
.m4h-sidebar {
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
}

.m4h-inspect,
.m4h-compare-view {
  padding: 8px 12px;
  overflow: auto;
}

.m4h-inspect-head > div,
.m4h-inspect-head > label {
  margin-bottom: 4px;
}

.m4h-inspect-body {
  display: flex;
  gap: 16px;
  align-items: flex-start;
  flex-wrap: wrap;
}

.m4h-inspect-left {
  flex: 1 1 360px;
  max-height: calc(100vh - 200px);
  overflow: auto;
}

.m4h-inspect-right {
  flex: 1 1 540px;
}

.m4h-branch-filter {
  width: 100%;
  margin: 4px 0;
  box-sizing: border-box;
}

.m4h-table {
  border-collapse: collapse;
  width: 100%;
}

.m4h-table th,
.m4h-table td {
  padding: 2px 6px;
  border-bottom: 1px solid var(--jp-border-color2);
  text-align: left;
  vertical-align: top;
}

.m4h-table th {
  color: var(--jp-ui-font-color2);
  font-weight: 600;
}

.m4h-branch-row,
.m4h-run-row,
.m4h-job-row,
.m4h-model-row {
  cursor: pointer;
}

.m4h-table tr:hover td {
  background: var(--jp-layout-color2);
}

.m4h-table tr.m4h-selected td {
  background: var(--jp-layout-color3);
}

.m4h-table tr.m4h-selected td:first-child {
  box-shadow: inset 3px 0 var(--jp-brand-color1);
}

.m4h-dim {
  color: var(--jp-ui-font-color2);
  font-size: var(--jp-ui-font-size0);
}

.m4h-note {
  margin: 4px 0;
  color: var(--jp-ui-font-color2);
}

.m4h-note-error {
  color: var(--jp-error-color1);
}

.m4h-chart {
  max-width: 100%;
  height: auto;
}

.m4h-chart .m4h-axes {
  fill: none;
  stroke: var(--jp-border-color1);
}

.m4h-chart .m4h-grid {
  stroke: var(--jp-border-color3);
}

.m4h-chart .m4h-tick {
  stroke: var(--jp-border-color1);
}

.m4h-chart .m4h-diagonal {
  stroke: var(--jp-ui-font-color3);
  stroke-dasharray: 3 3;
}

.m4h-chart text {
  fill: var(--jp-ui-font-color1);
  font-family: var(--jp-ui-font-family);
  font-size: 11px;
}

.m4h-chart .m4h-axislabel {
  font-size: 12px;
}

.m4h-legend {
  display: flex;
  flex-wrap: wrap;
  gap: 4px 14px;
  margin: 4px 0 8px;
}

.m4h-swatch {
  display: inline-block;
  width: 16px;
  height: 8px;
  margin-right: 5px;
  border: 2px solid;
  box-sizing: border-box;
  vertical-align: middle;
}

.m4h-swatch-dashed {
  border-style: dashed;
  border-width: 2px 0 0;
}

.m4h-compare-charts {
  display: flex;
  flex-wrap: wrap;
  gap: 16px;
}

.m4h-compare-chart {
  flex: 0 1 480px;
  min-width: 0;
}

.m4h-compare-chart h3 {
  margin: 8px 0 2px;
  font-size: var(--jp-ui-font-size2);
}

.m4h-sidebar .m4h-section {
  padding: 4px 8px;
  overflow: auto;
}

.m4h-sidebar-head {
  padding: 6px 8px;
}

.m4h-toolbar {
  display: flex;
  flex-wrap: wrap;
  align-items: center;
  gap: 4px;
  margin: 4px 0;
}

.m4h-toolbar .jp-Button {
  padding: 0 8px;
  min-height: 24px;
  line-height: 24px;
}

a.jp-Button {
  display: inline-block;
  text-decoration: none;
}

.m4h-scroll {
  max-height: 40vh;
  overflow: auto;
}

.m4h-status-finished,
.m4h-status-succeeded {
  color: var(--jp-success-color1);
}

.m4h-status-failed,
.m4h-status-interrupted {
  color: var(--jp-error-color1);
}

.m4h-status-running,
.m4h-status-queued {
  color: var(--jp-warn-color1);
}

.m4h-detail {
  margin-top: 6px;
}

.m4h-log {
  max-height: 30vh;
  overflow: auto;
  font-family: var(--jp-code-font-family);
  font-size: var(--jp-code-font-size);
  background: var(--jp-layout-color2);
  padding: 4px;
  white-space: pre-wrap;
  word-break: break-all;
}

.m4h-test-input {
  width: 100%;
  box-sizing: border-box;
  font-family: var(--jp-code-font-family);
}

.m4h-submit-form > * {
  display: block;
  margin: 4px 0;
}

.m4h-runs-table td:first-child {
  width: 18px;
}

.m4h-run-model {
  font-weight: 600;
  word-break: break-all;
}

a.m4h-download,
a.m4h-download:hover {
  background: var(--jp-brand-color1);
  color: var(--jp-ui-inverse-font-color1);
  border-radius: 2px;
}
`,""]),r.d(t,{},{A:s})},"./node_modules/css-loader/dist/runtime/api.js"(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var r="",o=void 0!==t[5];return t[4]&&(r+="@supports (".concat(t[4],") {")),t[2]&&(r+="@media ".concat(t[2]," {")),o&&(r+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),r+=e(t),o&&(r+="}"),t[2]&&(r+="}"),t[4]&&(r+="}"),r}).join("")},t.i=function(e,r,o,a,n){"string"==typeof e&&(e=[[null,e,void 0]]);var s={};if(o)for(var i=0;i<this.length;i++){var l=this[i][0];null!=l&&(s[l]=!0)}for(var d=0;d<e.length;d++){var c=[].concat(e[d]);o&&s[c[0]]||(void 0!==n&&(void 0===c[5]||(c[1]="@layer".concat(c[5].length>0?" ".concat(c[5]):""," {").concat(c[1],"}")),c[5]=n),r&&(c[2]&&(c[1]="@media ".concat(c[2]," {").concat(c[1],"}")),c[2]=r),a&&(c[4]?(c[1]="@supports (".concat(c[4],") {").concat(c[1],"}"),c[4]=a):c[4]="".concat(a)),t.push(c))}},t}},"./node_modules/css-loader/dist/runtime/noSourceMaps.js"(e){e.exports=function(e){return e[1]}},"./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"(e){var t=[];function r(e){for(var r=-1,o=0;o<t.length;o++)if(t[o].identifier===e){r=o;break}return r}function o(e,o){for(var a={},n=[],s=0;s<e.length;s++){var i=e[s],l=o.base?i[0]+o.base:i[0],d=a[l]||0,c="".concat(l," ").concat(d);a[l]=d+1;var p=r(c),m={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==p)t[p].references++,t[p].updater(m);else{var u=function(e,t){var r=t.domAPI(t);return r.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&r.update(e=t):r.remove()}}(m,o);o.byIndex=s,t.splice(s,0,{identifier:c,updater:u,references:1})}n.push(c)}return n}e.exports=function(e,a){var n=o(e=e||[],a=a||{});return function(e){e=e||[];for(var s=0;s<n.length;s++){var i=r(n[s]);t[i].references--}for(var l=o(e,a),d=0;d<n.length;d++){var c=r(n[d]);0===t[c].references&&(t[c].updater(),t.splice(c,1))}n=l}}},"./node_modules/style-loader/dist/runtime/insertBySelector.js"(e){var t={};e.exports=function(e,r){var o=function(e){if(void 0===t[e]){var r=document.querySelector(e);if(window.HTMLIFrameElement&&r instanceof window.HTMLIFrameElement)try{r=r.contentDocument.head}catch(e){r=null}t[e]=r}return t[e]}(e);if(!o)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");o.appendChild(r)}},"./node_modules/style-loader/dist/runtime/insertStyleElement.js"(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},"./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"(e,t,r){e.exports=function(e){var t=r.nc;t&&e.setAttribute("nonce",t)}},"./node_modules/style-loader/dist/runtime/styleDomAPI.js"(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(r){var o,a,n;o="",r.supports&&(o+="@supports (".concat(r.supports,") {")),r.media&&(o+="@media ".concat(r.media," {")),(a=void 0!==r.layer)&&(o+="@layer".concat(r.layer.length>0?" ".concat(r.layer):""," {")),o+=r.css,a&&(o+="}"),r.media&&(o+="}"),r.supports&&(o+="}"),(n=r.sourceMap)&&"u">typeof btoa&&(o+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(n))))," */")),e.styleTagTransform(o,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},"./node_modules/style-loader/dist/runtime/styleTagTransform.js"(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}},"./style/index.js"(e,t,r){var o=r("./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"),a=r.n(o),n=r("./node_modules/style-loader/dist/runtime/styleDomAPI.js"),s=r.n(n),i=r("./node_modules/style-loader/dist/runtime/insertBySelector.js"),l=r.n(i),d=r("./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"),c=r.n(d),p=r("./node_modules/style-loader/dist/runtime/insertStyleElement.js"),m=r.n(p),u=r("./node_modules/style-loader/dist/runtime/styleTagTransform.js"),h=r.n(u),f=r("./node_modules/css-loader/dist/cjs.js!./style/base.css"),v={};v.styleTagTransform=h(),v.setAttributes=c(),v.insert=l().bind(null,"head"),v.domAPI=s(),v.insertStyleElement=m(),a()(f.A,v),f.A&&f.A.locals&&f.A.locals}}]);