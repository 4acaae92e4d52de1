<?php
// Hello world, the client: one job, waits for the answer and prints it.
// Usage: php hello_client.php [TEXT] [FUNCTION]   (default "Hello World!", reverse)
// Exits 1 when the job fails (prints "Failed") or cannot be run.
declare(strict_types=1);
require __DIR__ . '/servers.php';

$text = $argv[1] ?? 'Hello World!';
$function = $argv[2] ?? 'reverse';

$client = new GearmanClient();
$client->addServers(gearman_servers());
// Note: doNormal() returns the job's result after any WORK_DATA the worker sent, all in one
// string; to see data and status packets as they come, use tasks (reverse_client_tasks.php).
$answer = $client->doNormal($function, $text);
switch ($client->returnCode()) {
    case GEARMAN_SUCCESS:
        echo $answer, "\n";
        exit(0);
    case GEARMAN_WORK_FAIL:
        echo "Failed\n";
        exit(1);
    default:
        echo 'Error: ', $client->error(), "\n";
        exit(1);
}
