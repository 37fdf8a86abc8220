// Swagger UI for /api/openapi.json, from the swagger-ui-dist npm package served by this server.
(function () {
  const el = document.getElementById("swagger-ui");
  if (typeof window.SwaggerUIBundle !== "function") {
    el.innerHTML = "<p class='docs-loading'>Swagger UI is not installed on this server (run <code>npm ci</code>). The API description is at <a href='/api/openapi.json'>/api/openapi.json</a>.</p>";
    return;
  }
  window.ui = window.SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    layout: "BaseLayout",
    presets: [window.SwaggerUIBundle.presets.apis],
    withCredentials: true,
    persistAuthorization: false,
    tryItOutEnabled: false,
  });
})();
