<?php
// For apps that do not use Composer: `require 'path/to/clients/php/autoload.php';`
// maps the Outlast\ namespace onto src/ (PSR-4), as Composer's autoloader would.
spl_autoload_register(static function (string $class): void {
    if (strncmp($class, 'Outlast\\', 8) !== 0) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, 8)) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
