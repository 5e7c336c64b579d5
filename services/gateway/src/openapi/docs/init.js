// Starts Swagger UI on the gateway's own OpenAPI document. Kept out of index.html so a
// Content-Security-Policy of `script-src 'self'` still allows it.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    displayRequestDuration: true,
    // No call to the public validator service: the page must work offline.
    validatorUrl: null,
  });
});
